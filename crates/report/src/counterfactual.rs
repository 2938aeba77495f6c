//! What a lineage would have ended with without spotcheck, and fully on-demand.
//!
//! Owns [`counterfactual`] (pure: the lineage's attempts in, three outcomes out) and the
//! one-line summary a person reads ([`Counterfactual::line`]). Used by `spotcheck report` (from
//! the ledger's attempt facts) and by the demo (from the local service's jobs). Definitions:
//!
//! - **Without spotcheck** (SageMaker's own restarts only): nobody relaunches, so the lineage
//!   ends where attempt 1 ended. When attempt 1 completed, nothing changes. Otherwise (typically
//!   Stopped/MaxWaitTimeExceeded) the work stops at the step attempt 1 had durably reached: the
//!   step attempt 2 resumed from (`spotcheck:resume-step`, which the control plane set from the
//!   newest valid checkpoint), and the money spent is attempt 1's bill (billable seconds ×
//!   instance count × on-demand rate, as for savings).
//! - **With spotcheck**: what happened — the last attempt's outcome, and the bill of every
//!   attempt.
//! - **Fully on-demand**: every attempt's training seconds at its on-demand rate (the savings
//!   formulas' on-demand cost). It prices the work as it ran, so the few steps redone after
//!   interruptions are included: an upper bound by those steps.
//!
//! Dollars are `None` when any attempt needed lacks a price or its times.

use serde::Serialize;
use spotcheck_control::savings::AttemptFacts;

/// One way the lineage could end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alternative {
    /// `TrainingJobStatus/SecondaryStatus` it ends with (`None`: not a SageMaker outcome).
    pub outcome: Option<String>,
    /// Whether training completed.
    pub completed: bool,
    /// The durable step reached when it did not complete (`None`: unknown, or completed).
    pub step_reached: Option<u64>,
    /// What it cost in USD.
    pub cost_usd: Option<f64>,
}

/// The three outcomes of a lineage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Counterfactual {
    /// SageMaker alone: the lineage ends with attempt 1.
    pub without_spotcheck: Alternative,
    /// What happened.
    pub with_spotcheck: Alternative,
    /// Every attempt's training time at on-demand rates.
    pub on_demand: Alternative,
}

fn outcome(a: &AttemptFacts) -> Option<String> {
    match (&a.status, &a.secondary_status) {
        (Some(s), Some(ss)) => Some(format!("{s}/{ss}")),
        (Some(s), None) => Some(s.clone()),
        _ => None,
    }
}

fn completed(a: &AttemptFacts) -> bool {
    a.status.as_deref() == Some("Completed")
}

fn sum(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.sum()
}

/// The counterfactual of a lineage from its attempts (any order; they are sorted by attempt
/// number). `None` without attempt 1.
pub fn counterfactual(attempts: &[AttemptFacts]) -> Option<Counterfactual> {
    let mut sorted: Vec<&AttemptFacts> = attempts.iter().collect();
    sorted.sort_by_key(|a| a.attempt);
    let first = *sorted.first().filter(|a| a.attempt == 1)?;
    let last = *sorted.last()?;
    let first_completed = completed(first);
    let without_spotcheck = Alternative {
        outcome: outcome(first),
        completed: first_completed,
        step_reached: if first_completed {
            None
        } else {
            sorted
                .iter()
                .find(|a| a.attempt == 2)
                .and_then(|a| a.resume_step)
        },
        cost_usd: first.billed_usd(),
    };
    let with_spotcheck = Alternative {
        outcome: outcome(last),
        completed: completed(last),
        step_reached: None,
        cost_usd: sum(sorted.iter().map(|a| a.billed_usd())),
    };
    let on_demand = Alternative {
        outcome: None,
        completed: true,
        step_reached: None,
        cost_usd: sum(sorted.iter().map(|a| a.on_demand_usd())),
    };
    Some(Counterfactual {
        without_spotcheck,
        with_spotcheck,
        on_demand,
    })
}

fn usd(x: Option<f64>) -> String {
    x.map_or_else(|| "$?".to_owned(), |x| format!("${x:.2}"))
}

impl Counterfactual {
    /// The value in one line, e.g. "without spotcheck: stopped at step 1200
    /// (Stopped/MaxWaitTimeExceeded) after $1.20; with spotcheck: completed for $2.10; fully
    /// on-demand: $6.30".
    pub fn line(&self) -> String {
        let w = &self.without_spotcheck;
        let without = if w.completed {
            format!("completed for {}", usd(w.cost_usd))
        } else {
            let at = w
                .step_reached
                .map_or_else(|| "an unknown step".to_owned(), |s| format!("step {s}"));
            format!(
                "stopped at {at} ({}) after {}",
                w.outcome.as_deref().unwrap_or("unknown outcome"),
                usd(w.cost_usd)
            )
        };
        let s = &self.with_spotcheck;
        let with = if s.completed {
            format!("completed for {}", usd(s.cost_usd))
        } else {
            format!(
                "ended {} after {}",
                s.outcome.as_deref().unwrap_or("in an unknown state"),
                usd(s.cost_usd)
            )
        };
        format!(
            "without spotcheck: {without}; with spotcheck: {with}; fully on-demand: {}",
            usd(self.on_demand.cost_usd)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(
        n: u32,
        status: &str,
        secondary: &str,
        (training, billable): (u64, u64),
        resume: Option<u64>,
    ) -> AttemptFacts {
        AttemptFacts {
            job_name: format!("a{n}"),
            attempt: n,
            instance_type: Some("ml.p3.2xlarge".into()),
            instance_count: Some(1),
            spot: Some(true),
            status: Some(status.into()),
            secondary_status: Some(secondary.into()),
            training_seconds: Some(training),
            billable_seconds: Some(billable),
            on_demand_usd_per_hour: Some(3.6),
            interruptions: 0,
            sagemaker_restarts: 0,
            resume_step: resume,
            max_wait_seconds: Some(7200),
            created_at: None,
            ended_at: None,
            phases: Vec::new(),
        }
    }

    #[test]
    fn a_relaunched_lineage_against_sagemaker_alone_and_on_demand() {
        let attempts = [
            attempt(3, "Completed", "Completed", (3600, 1200), Some(1200)),
            attempt(1, "Stopped", "MaxWaitTimeExceeded", (1800, 600), None),
            attempt(2, "Stopped", "MaxWaitTimeExceeded", (0, 0), Some(1200)),
        ];
        let c = counterfactual(&attempts).unwrap();
        assert_eq!(
            c.without_spotcheck.outcome.as_deref(),
            Some("Stopped/MaxWaitTimeExceeded")
        );
        assert!(!c.without_spotcheck.completed);
        assert_eq!(c.without_spotcheck.step_reached, Some(1200));
        // 600 s at 3.6/h; then 1800 s in all; on-demand 5400 s.
        assert!((c.without_spotcheck.cost_usd.unwrap() - 0.6).abs() < 1e-9);
        assert!(c.with_spotcheck.completed);
        assert!((c.with_spotcheck.cost_usd.unwrap() - 1.8).abs() < 1e-9);
        assert!((c.on_demand.cost_usd.unwrap() - 5.4).abs() < 1e-9);
        assert_eq!(
            c.line(),
            "without spotcheck: stopped at step 1200 (Stopped/MaxWaitTimeExceeded) after $0.60; \
             with spotcheck: completed for $1.80; fully on-demand: $5.40"
        );
    }

    #[test]
    fn a_first_attempt_that_completed_needs_no_rescue_and_unknowns_stay_unknown() {
        let done = [attempt(1, "Completed", "Completed", (100, 30), None)];
        let c = counterfactual(&done).unwrap();
        assert!(c.without_spotcheck.completed && c.with_spotcheck.completed);
        assert_eq!(c.without_spotcheck.cost_usd, c.with_spotcheck.cost_usd);

        let mut unpriced = attempt(1, "Stopped", "MaxWaitTimeExceeded", (100, 30), None);
        unpriced.on_demand_usd_per_hour = None;
        let c = counterfactual(&[unpriced]).unwrap();
        assert_eq!(c.without_spotcheck.cost_usd, None);
        assert_eq!(c.without_spotcheck.step_reached, None, "no attempt 2");
        assert!(
            c.line().contains("stopped at an unknown step"),
            "{}",
            c.line()
        );

        assert_eq!(
            counterfactual(&[attempt(2, "Completed", "Completed", (1, 1), Some(5))]),
            None,
            "attempt 1 unknown"
        );
        assert_eq!(counterfactual(&[]), None);
    }
}
