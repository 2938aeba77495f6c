//! Simulated time: a clock that runs `scale` times faster than the wall clock and can jump
//! forward while nothing is running.
//!
//! Owns [`SimClock`], the one source of "now" for the local service: job timestamps, billing,
//! the spot market and the control plane's decision time all read it. Simulated time is
//!
//! ```text
//! sim_now = sim_start + scale × (wall_now − wall_start) + skipped
//! ```
//!
//! so a running trainer's `TrainingTimeInSeconds`/`BillableTimeInSeconds` are its wall seconds ×
//! `scale`, and [`SimClock::advance`] adds `skipped` when the service fast-forwards an idle
//! stretch (every job waiting for capacity, no process running, no event in flight). It does not
//! decide when to fast-forward: the service does. Sleepers wake early when the clock jumps.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Milliseconds since the Unix epoch, in simulated time.
pub type EpochMs = i64;

/// The service's clock (see the module doc).
#[derive(Debug)]
pub struct SimClock {
    wall_start: Instant,
    sim_start: EpochMs,
    scale: f64,
    skipped: AtomicI64,
    jumps: watch::Sender<u64>,
}

impl SimClock {
    /// A clock reading `sim_start` now and running `scale` (> 0) times faster than the wall.
    pub fn new(sim_start: EpochMs, scale: f64) -> Self {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            1.0
        };
        SimClock {
            wall_start: Instant::now(),
            sim_start,
            scale,
            skipped: AtomicI64::new(0),
            jumps: watch::channel(0).0,
        }
    }

    /// A clock starting at the current wall-clock time.
    pub fn starting_now(scale: f64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self::new(now, scale)
    }

    /// The time-scale factor: simulated seconds per wall second.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Simulated now.
    pub fn now_ms(&self) -> EpochMs {
        let wall = self.wall_start.elapsed().as_secs_f64() * 1000.0 * self.scale;
        self.sim_start + wall as i64 + self.skipped.load(Ordering::SeqCst)
    }

    /// Total simulated time skipped by fast-forwarding.
    pub fn skipped_ms(&self) -> i64 {
        self.skipped.load(Ordering::SeqCst)
    }

    /// Jumps `ms` forward (ignored when not positive) and wakes every sleeper.
    pub fn advance(&self, ms: i64) {
        if ms > 0 {
            self.skipped.fetch_add(ms, Ordering::SeqCst);
            self.jumps.send_modify(|n| *n += 1);
        }
    }

    /// The wall-clock duration of `sim_ms` simulated milliseconds.
    pub fn wall_for(&self, sim_ms: i64) -> Duration {
        Duration::from_secs_f64((sim_ms.max(0) as f64 / 1000.0) / self.scale)
    }

    /// Sleeps until simulated time `at`, waking early if the clock jumps past it.
    pub async fn sleep_until(&self, at: EpochMs) {
        let mut jumps = self.jumps.subscribe();
        loop {
            let now = self.now_ms();
            if now >= at {
                return;
            }
            // Wake at least every second of wall time, so rounding never strands a sleeper.
            let wait =
                self.wall_for(at - now).min(Duration::from_secs(1)) + Duration::from_millis(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = jumps.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_and_advance() {
        let c = SimClock::new(1_000_000, 100.0);
        let a = c.now_ms();
        assert!(a >= 1_000_000);
        c.advance(60_000);
        assert!(c.now_ms() >= a + 60_000);
        assert_eq!(c.skipped_ms(), 60_000);
        c.advance(-5);
        assert_eq!(c.skipped_ms(), 60_000);
        assert_eq!(c.wall_for(100_000), Duration::from_secs(1));
        assert_eq!(SimClock::new(0, f64::NAN).scale(), 1.0);
    }

    #[tokio::test]
    async fn sleepers_wake_on_jumps() {
        let c = std::sync::Arc::new(SimClock::new(0, 1.0));
        let target = c.now_ms() + 3_600_000;
        let c2 = c.clone();
        let sleeper = tokio::spawn(async move { c2.sleep_until(target).await });
        c.advance(3_600_000);
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woke after the jump")
            .unwrap();
    }
}
