//! When to checkpoint: fixed step/time triggers and the Young/Daly optimum.
//!
//! With checkpoint cost C (seconds the training pays per checkpoint) and mean time between
//! interruptions M, Young's interval √(2CM) minimises expected lost plus spent time; Daly's
//! higher-order correction is `√(2CM)·(1 + ⅓√(C/2M) + C/18M) − C` for C < 2M, and M otherwise.

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

/// What is due at a step boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing.
    No,
    /// A periodic checkpoint (skipped while another persist is in flight).
    Periodic,
}

/// Fixed and adaptive triggers, evaluated at step boundaries.
#[derive(Debug, Clone)]
pub struct Triggers {
    /// Every N steps (0: off).
    pub every_steps: u64,
    /// Every T of training time.
    pub every: Option<Duration>,
    /// The current adaptive interval, once a checkpoint cost has been measured.
    pub adaptive: Option<Duration>,
}

impl Triggers {
    /// Whether a checkpoint is due after `step`, `since_last` after the previous one.
    pub fn due(&self, step: u64, since_last: Duration) -> Due {
        let by_steps = self.every_steps > 0 && step.is_multiple_of(self.every_steps);
        let by_time = self.every.is_some_and(|t| since_last >= t);
        let by_adaptive = self.adaptive.is_some_and(|t| since_last >= t);
        if by_steps || by_time || by_adaptive {
            Due::Periodic
        } else {
            Due::No
        }
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
            adaptive: None,
        };
        assert_eq!(t.due(5, Duration::ZERO), Due::Periodic);
        assert_eq!(t.due(6, Duration::from_secs(3)), Due::No);
        assert_eq!(t.due(7, Duration::from_secs(10)), Due::Periodic);
    }
}
