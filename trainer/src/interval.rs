//! When to checkpoint: fixed step/time triggers and the Young/Daly optimum.
//!
//! With checkpoint cost C (seconds the training pays per checkpoint) and mean time between
//! interruptions M, Young's interval √(2CM) minimises expected lost plus spent time; Daly's
//! higher-order correction is `√(2CM)·(1 + ⅓√(C/2M) + C/18M) − C` for C < 2M, and M otherwise.
//!
//! C is what the loop loses: the hand-over it waits for, plus how much slower its steps ran
//! while the persist was in flight ([`Interference`]) — on a CPU-bound host the persister's
//! copy, hashing and writing take cores and memory bandwidth from training; on a GPU they
//! mostly do not.
//!
//! C is measured once per persist, and one measurement is noisy: a step descheduled on a busy
//! host can multiply it. The planner uses the median of the last few ([`Recent`]), so one
//! outlier neither stretches nor shrinks the interval for the rest of the process.

use std::collections::VecDeque;
use std::time::Duration;

/// Daly's optimum checkpoint interval.
pub fn daly_interval(cost: Duration, mtbf: Duration) -> Duration {
    let c = cost.as_secs_f64().max(1e-6);
    let m = mtbf.as_secs_f64().max(1e-6);
    if c >= 2.0 * m {
        return mtbf;
    }
    let young = (2.0 * c * m).sqrt();
    let t = young * (1.0 + (c / (2.0 * m)).sqrt() / 3.0 + c / (18.0 * m)) - c;
    Duration::from_secs_f64(t.max(c))
}

/// Mean time between interruptions from the expected rate and what this run has seen.
///
/// Observed restarts only ever shorten the estimate: a run that was interrupted more often
/// than expected should checkpoint more often, never less.
pub fn mtbf(expected_per_hour: f64, restarts: u32, run_seconds: f64) -> Option<Duration> {
    let observed = if run_seconds > 60.0 && restarts > 0 {
        restarts as f64 / (run_seconds / 3600.0)
    } else {
        0.0
    };
    let rate = expected_per_hour.max(observed);
    (rate > 0.0).then(|| Duration::from_secs_f64(3600.0 / rate))
}

/// Fixed triggers, evaluated at step boundaries.
#[derive(Debug, Clone)]
pub struct Triggers {
    /// Every N steps (0: off).
    pub every_steps: u64,
    /// Every T of training time.
    pub every: Option<Duration>,
}

impl Triggers {
    /// Whether a fixed trigger fires after `step`, `since_last` after the previous checkpoint.
    pub fn fire(&self, step: u64, since_last: Duration) -> bool {
        let by_steps = self.every_steps > 0 && step.is_multiple_of(self.every_steps);
        let by_time = self.every.is_some_and(|t| since_last >= t);
        by_steps || by_time
    }
}

/// Why a checkpoint is taken (logged with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The first checkpoint of this process: it measures the cost the adaptive interval is
    /// computed from. Every process measures its own (a resumed one too), so the adaptive
    /// interval never depends on what an earlier process saw.
    Measure,
    /// A fixed trigger or the adaptive interval.
    Periodic,
    /// A rebalance recommendation asked for one.
    Rebalance,
    /// The previous persist failed; trying again after a backoff.
    Retry,
    /// The end of training or a stop.
    Final,
}

/// The longest wait before retrying a failed persist.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

/// The wait before retrying after `failures` consecutive failed persists: 1, 2, 4 … seconds,
/// capped at [`MAX_RETRY_BACKOFF`] (a full disk must not be hammered, nor given up on).
pub fn retry_backoff(failures: u32) -> Duration {
    let secs = 1u64
        .checked_shl(failures.saturating_sub(1).min(16))
        .unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_RETRY_BACKOFF)
}

/// Steps run without a persist in flight before their mean is trusted as the baseline.
const BASELINE_STEPS: u32 = 3;

/// How much a background persist slows the training loop: the steps that began while one was
/// in flight, against the mean of those that began with none. Pure (durations in).
#[derive(Debug, Clone, Default)]
pub struct Interference {
    idle_seconds: f64,
    idle_steps: u32,
    busy_seconds: f64,
    busy_steps: u32,
    ended: bool,
}

impl Interference {
    /// A step took `took`; `busy`: a persist was in flight when it began.
    pub fn step(&mut self, took: Duration, busy: bool) {
        if busy {
            self.busy_seconds += took.as_secs_f64();
            self.busy_steps += 1;
        } else {
            self.idle_seconds += took.as_secs_f64();
            self.idle_steps = self.idle_steps.saturating_add(1);
        }
    }

    /// A persist ended (committed or not).
    pub fn persist_ended(&mut self) {
        self.ended = true;
    }

    /// The extra time the steps under the persist(s) that ended took, once enough idle steps
    /// give a baseline; each in-flight step is charged once.
    pub fn take_extra(&mut self) -> Option<Duration> {
        if !self.ended || self.idle_steps < BASELINE_STEPS {
            return None;
        }
        let mean = self.idle_seconds / f64::from(self.idle_steps);
        let extra = (self.busy_seconds - mean * f64::from(self.busy_steps)).max(0.0);
        self.busy_seconds = 0.0;
        self.busy_steps = 0;
        self.ended = false;
        Some(Duration::from_secs_f64(extra))
    }
}

/// How many of the latest measurements [`Recent`] keeps: an odd number, so one outlier in the
/// window never becomes the median.
const RECENT: usize = 5;

/// The latest few measurements of the checkpoint cost, summarised by their median.
#[derive(Debug, Clone, Default)]
struct Recent(VecDeque<Duration>);

impl Recent {
    fn add(&mut self, d: Duration) {
        if self.0.len() == RECENT {
            self.0.pop_front();
        }
        self.0.push_back(d);
    }

    /// The lower median (of two, the smaller: a shorter interval loses less work), or `None`
    /// before any measurement.
    fn median(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.0.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len().saturating_sub(1) / 2).copied()
    }
}

/// When to checkpoint: the fixed triggers, the adaptive Young/Daly interval, rebalance
/// requests and retries after failures, as one pure state machine driven by the training loop
/// at step boundaries (durations in, decisions out; no clock).
#[derive(Debug, Clone)]
pub struct Planner {
    triggers: Triggers,
    adaptive_enabled: bool,
    /// The adaptive interval from the measured cost, before the upload floor.
    adaptive: Option<Duration>,
    /// How long the last checkpoint took to reach S3 (`Duration::ZERO` when nothing uploads).
    upload_floor: Duration,
    measured: bool,
    rebalance_pending: bool,
    failures: u32,
    /// The last persist's hand-over stall and time to durable, and the MTBF then.
    last: Option<(Duration, Duration, Duration)>,
    /// Recent persists' full cost: stall plus what the steps under them lost.
    costs: Recent,
}

impl Planner {
    /// A planner with these fixed triggers, plus the adaptive interval when enabled.
    pub fn new(triggers: Triggers, adaptive_enabled: bool) -> Self {
        Planner {
            triggers,
            adaptive_enabled,
            adaptive: None,
            upload_floor: Duration::ZERO,
            measured: false,
            rebalance_pending: false,
            failures: 0,
            last: None,
            costs: Recent::default(),
        }
    }

    /// A rebalance recommendation arrived: one checkpoint is owed until one is taken, even if a
    /// persist is in flight now.
    pub fn note_rebalance(&mut self) {
        self.rebalance_pending = true;
    }

    /// The adaptive interval in force: Young/Daly from the measured cost, never shorter than
    /// the time the last checkpoint took to upload (checkpointing faster than the uploader
    /// ships only queues checkpoints that die with the instance).
    pub fn adaptive_interval(&self) -> Option<Duration> {
        self.adaptive.map(|t| t.max(self.upload_floor))
    }

    /// What, if anything, to checkpoint now: after `step`, `since_last` after the previous
    /// checkpoint was taken, with a persist in flight or not. While one is in flight nothing is
    /// taken (and nothing owed is forgotten: the next boundary asks again).
    pub fn due(&mut self, step: u64, since_last: Duration, busy: bool) -> Option<Why> {
        if busy {
            return None;
        }
        let why = if self.failures > 0 {
            (since_last >= retry_backoff(self.failures)).then_some(Why::Retry)
        } else if self.adaptive_enabled && !self.measured {
            Some(Why::Measure)
        } else if self.rebalance_pending {
            Some(Why::Rebalance)
        } else if self.triggers.fire(step, since_last)
            || self.adaptive_interval().is_some_and(|t| since_last >= t)
        {
            Some(Why::Periodic)
        } else {
            None
        };
        if why.is_some() {
            // Any checkpoint satisfies a pending rebalance request.
            self.rebalance_pending = false;
        }
        why
    }

    /// A persist succeeded: `stall` is what the loop paid for its hand-over, `persist` the
    /// time to durable; `mtbf` the current estimate of the time between interruptions (`None`:
    /// no adaptive interval). Until [`Self::interfered`] tells what a persist costs the loop's
    /// steps, the first persist's cost counts its whole persist time on top of the stall: an
    /// upper bound, so the first interval errs long, never back to back; later ones keep the
    /// recent costs' median until theirs is known.
    pub fn persisted(&mut self, stall: Duration, persist: Duration, mtbf: Option<Duration>) {
        self.failures = 0;
        self.measured = true;
        self.last = mtbf.map(|m| (stall, persist, m));
        self.replan();
    }

    /// What the steps that ran under the last persist(s) lost to it ([`Interference`]).
    pub fn interfered(&mut self, extra: Duration) {
        if let Some((stall, _, _)) = self.last {
            self.costs.add(stall + extra);
        }
        self.replan();
    }

    fn replan(&mut self) {
        if let (true, Some((stall, persist, mtbf))) = (self.adaptive_enabled, self.last) {
            let cost = self.costs.median().unwrap_or(stall + persist);
            self.adaptive = Some(daly_interval(cost, mtbf).max(persist));
        }
    }

    /// A persist failed: retry after a backoff, even if fixed triggers are not due.
    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// The uploader's pace: the last checkpoint took `took` to reach S3 after it was written,
    /// or the oldest one still on its way has waited that long already.
    pub fn upload_pace(&mut self, took: Duration) {
        self.upload_floor = took;
    }

    /// Consecutive failed persists.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daly_is_close_to_young_for_cheap_checkpoints() {
        // C = 1 s, M = 1 h: Young gives √7200 ≈ 84.9 s; Daly adds a little and subtracts C.
        let t = daly_interval(Duration::from_secs(1), Duration::from_secs(3600)).as_secs_f64();
        assert!((t - 84.85).abs() < 1.5, "{t}");
    }

    #[test]
    fn expensive_checkpoints_fall_back_to_mtbf() {
        let m = Duration::from_secs(10);
        assert_eq!(daly_interval(Duration::from_secs(30), m), m);
    }

    #[test]
    fn observed_restarts_only_shorten_the_mtbf() {
        let expected = mtbf(1.0, 0, 0.0).unwrap();
        assert_eq!(expected, Duration::from_secs(3600));
        assert_eq!(mtbf(1.0, 1, 7200.0).unwrap(), expected);
        assert_eq!(mtbf(1.0, 4, 3600.0).unwrap(), Duration::from_secs(900));
        assert_eq!(mtbf(0.0, 0, 0.0), None);
    }

    #[test]
    fn triggers_fire_on_steps_or_time() {
        let t = Triggers {
            every_steps: 5,
            every: Some(Duration::from_secs(10)),
        };
        assert!(t.fire(5, Duration::ZERO));
        assert!(!t.fire(6, Duration::from_secs(3)));
        assert!(t.fire(7, Duration::from_secs(10)));
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn adaptive_only() -> Planner {
        Planner::new(
            Triggers {
                every_steps: 0,
                every: None,
            },
            true,
        )
    }

    #[test]
    fn every_process_measures_its_first_checkpoint_then_goes_adaptive() {
        // A resumed process starts with a fresh planner: it measures at its first boundary,
        // whatever step that is (the regression: only step 1 of a fresh run measured, so a
        // resumed run never checkpointed again until the end).
        let mut p = adaptive_only();
        assert_eq!(p.due(5_001, secs(0.0), false), Some(Why::Measure));
        p.persisted(secs(0.001), secs(0.02), Some(secs(3600.0)));
        // Until the steps' slowdown is measured, the whole persist time counts (C = 21 ms).
        let first = p.adaptive_interval().unwrap();
        assert!(first > secs(12.0) && first < secs(13.0), "{first:?}");
        p.interfered(Duration::ZERO);
        let t = p.adaptive_interval().unwrap();
        assert!(t > secs(2.0) && t < secs(3.0), "{t:?}");
        assert_eq!(p.due(5_002, secs(1.0), false), None);
        assert_eq!(p.due(5_100, t, false), Some(Why::Periodic));
        assert_eq!(p.due(5_101, t, true), None, "never while one is in flight");
        assert_eq!(p.due(5_102, t * 2, false), Some(Why::Periodic), "and again");
    }

    #[test]
    fn a_failed_persist_is_retried_with_backoff_even_the_measuring_one() {
        let mut p = adaptive_only();
        assert_eq!(p.due(1, Duration::ZERO, false), Some(Why::Measure));
        p.failed();
        assert_eq!(p.due(2, secs(0.5), false), None);
        assert_eq!(p.due(3, secs(1.0), false), Some(Why::Retry));
        p.failed();
        assert_eq!(p.due(4, secs(1.5), false), None);
        assert_eq!(p.due(5, secs(2.0), false), Some(Why::Retry));
        p.persisted(secs(0.001), secs(0.01), Some(secs(3600.0)));
        p.interfered(Duration::ZERO);
        assert_eq!(p.failures(), 0);
        assert!(p.adaptive_interval().is_some());
        assert_eq!(retry_backoff(30), MAX_RETRY_BACKOFF);
        // Fixed triggers only (adaptive off): a failure is retried too.
        let mut p = Planner::new(
            Triggers {
                every_steps: 100,
                every: None,
            },
            false,
        );
        assert_eq!(p.due(1, Duration::ZERO, false), None);
        assert_eq!(p.due(100, Duration::ZERO, false), Some(Why::Periodic));
        p.failed();
        assert_eq!(p.due(101, secs(1.0), false), Some(Why::Retry));
    }

    #[test]
    fn a_rebalance_during_a_persist_is_not_lost() {
        let mut p = adaptive_only();
        assert_eq!(p.due(1, Duration::ZERO, false), Some(Why::Measure));
        p.note_rebalance();
        // The measuring persist is still in flight: nothing now, but the request stays.
        assert_eq!(p.due(2, secs(0.01), true), None);
        assert_eq!(p.due(3, secs(0.02), true), None);
        p.persisted(secs(0.001), secs(0.05), Some(secs(3600.0)));
        assert_eq!(p.due(4, secs(0.06), false), Some(Why::Rebalance));
        assert_eq!(p.due(5, secs(0.01), false), None, "taken once");
    }

    #[test]
    fn the_upload_pace_floors_the_adaptive_interval() {
        let mut p = adaptive_only();
        p.due(1, Duration::ZERO, false);
        p.persisted(secs(0.001), secs(0.02), Some(secs(3600.0)));
        p.interfered(Duration::ZERO);
        let young = p.adaptive_interval().unwrap();
        p.upload_pace(secs(30.0));
        assert_eq!(p.adaptive_interval(), Some(secs(30.0)));
        assert_eq!(p.due(10, young, false), None);
        assert_eq!(p.due(11, secs(30.0), false), Some(Why::Periodic));
        p.upload_pace(Duration::ZERO);
        assert_eq!(p.adaptive_interval(), Some(young));
    }

    #[test]
    fn one_outlying_measurement_does_not_move_the_interval() {
        // A host that descheduled the loop once during one persist: that persist's steps lost
        // 5 s instead of ~2 s. The median of the recent persists ignores it.
        let mut p = adaptive_only();
        p.due(1, Duration::ZERO, false);
        for extra in [2.0, 2.1, 1.9] {
            p.persisted(Duration::ZERO, secs(6.0), Some(secs(3600.0)));
            p.interfered(secs(extra));
        }
        let steady = p.adaptive_interval().unwrap();
        p.persisted(Duration::ZERO, secs(6.0), Some(secs(3600.0)));
        p.interfered(secs(5.0));
        assert_eq!(p.adaptive_interval(), Some(steady));
        // A lasting change is followed once it is most of the window.
        for _ in 0..2 {
            p.persisted(Duration::ZERO, secs(6.0), Some(secs(3600.0)));
            p.interfered(secs(8.0));
        }
        let t = p.adaptive_interval().unwrap().as_secs_f64();
        // Young with C = 5 s (the median of 2.1, 1.9, 5, 8, 8 is 5), M = 1 h: √36000 ≈ 190 s.
        assert!((185.0..200.0).contains(&t), "{t}");
        assert!(secs(t) > steady);
    }

    #[test]
    fn the_median_of_recent_measurements_is_the_lower_one_and_forgets_old_ones() {
        let mut r = Recent::default();
        assert_eq!(r.median(), None);
        r.add(secs(3.0));
        assert_eq!(r.median(), Some(secs(3.0)));
        r.add(secs(1.0));
        assert_eq!(r.median(), Some(secs(1.0)), "of two, the shorter interval");
        for _ in 0..RECENT {
            r.add(secs(7.0));
        }
        assert_eq!(r.median(), Some(secs(7.0)));
        assert_eq!(r.0.len(), RECENT);
    }

    #[test]
    fn steps_slowed_by_a_persist_count_in_the_checkpoint_cost() {
        let mut p = adaptive_only();
        let mut meter = Interference::default();
        assert_eq!(p.due(1, Duration::ZERO, false), Some(Why::Measure));
        // The hand-over was free, but the four steps under the persist took 1.5 s instead of 1 s.
        for _ in 0..4 {
            meter.step(secs(1.5), true);
        }
        p.persisted(Duration::ZERO, secs(6.0), Some(secs(3600.0)));
        meter.persist_ended();
        assert_eq!(meter.take_extra(), None, "no baseline yet");
        meter.step(secs(1.0), false);
        meter.step(secs(1.0), false);
        assert_eq!(meter.take_extra(), None, "baseline still too short");
        meter.step(secs(1.0), false);
        let extra = meter.take_extra().unwrap();
        assert!((extra.as_secs_f64() - 2.0).abs() < 1e-9, "{extra:?}");
        assert_eq!(meter.take_extra(), None, "charged once");
        p.interfered(extra);
        // Young with C = 2 s, M = 1 h: √14400 = 120 s (Daly: a little more, minus C).
        let t = p.adaptive_interval().unwrap().as_secs_f64();
        assert!((118.0..125.0).contains(&t), "{t}");
        // A persist that does not slow the steps costs only its hand-over.
        meter.step(secs(1.0), true);
        meter.persist_ended();
        assert_eq!(meter.take_extra(), Some(Duration::ZERO));
    }
}
