//! Learning-rate schedules: pure functions of the step, so their whole state is the step.

use crate::hyper::ScheduleKind;

/// A learning-rate schedule with linear warm-up.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Schedule {
    /// Shape after warm-up.
    pub kind: ScheduleKind,
    /// Peak rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total steps of the run (cosine reaches zero there).
    pub total: u64,
    /// Steps between decays (step schedule).
    pub step_every: u64,
    /// Decay factor (step schedule).
    pub gamma: f64,
}

impl Schedule {
    /// The rate for the update that produces step `step + 1`.
    pub fn rate(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let t = step - self.warmup;
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Step => self.peak * self.gamma.powi((t / self.step_every.max(1)) as i32),
            ScheduleKind::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let progress = (t as f64 / span).min(1.0);
                0.5 * self.peak * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            peak: 1.0,
            warmup: 10,
            total: 110,
            step_every: 20,
            gamma: 0.5,
        }
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        assert!((s(ScheduleKind::Constant).rate(0) - 0.1).abs() < 1e-12);
        assert!((s(ScheduleKind::Constant).rate(9) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_falls_to_zero_and_step_halves() {
        let c = s(ScheduleKind::Cosine);
        assert!((c.rate(10) - 1.0).abs() < 1e-12);
        assert!((c.rate(60) - 0.5).abs() < 1e-12);
        assert!(c.rate(110).abs() < 1e-12);
        let st = s(ScheduleKind::Step);
        assert_eq!(st.rate(29), 1.0);
        assert_eq!(st.rate(30), 0.5);
        assert_eq!(st.rate(50), 0.25);
    }
}
