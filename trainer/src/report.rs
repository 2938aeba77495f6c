//! Progress for people and machines: a progress bar at a terminal, JSON log lines otherwise
//! (CloudWatch Logs and the tests read those).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Reports training progress.
pub struct Reporter {
    bar: Option<ProgressBar>,
    log_every: u64,
    started: Instant,
    start_step: u64,
}

impl Reporter {
    /// A reporter for a run from `start_step` to `total` steps.
    pub fn new(tty: bool, start_step: u64, total: u64, log_every: u64) -> Self {
        let bar = tty.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps · {per_sec} · ETA {eta} · {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(start_step);
            bar
        });
        Self {
            bar,
            log_every,
            started: Instant::now(),
            start_step,
        }
    }

    /// Whether the loss should be read at this step (reading it waits for the device).
    pub fn wants_loss(&self, step: u64) -> bool {
        step.is_multiple_of(self.log_every)
            || self.bar.as_ref().is_some_and(|_| step.is_multiple_of(10))
    }

    /// Images per second since this process started training.
    pub fn throughput(&self, step: u64, batch: usize) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        (step - self.start_step) as f64 * batch as f64 / secs
    }

    /// Records a finished step.
    pub fn step(&self, step: u64, total: u64, epoch: u32, loss: Option<f64>, batch: usize) {
        let ips = self.throughput(step, batch);
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                if let Some(l) = loss {
                    bar.set_message(format!("epoch {epoch} · loss {l:.4} · {ips:.0} img/s"));
                }
            }
            None if step.is_multiple_of(self.log_every) || step == total => {
                let done = (step - self.start_step).max(1) as f64;
                let eta = self.started.elapsed().as_secs_f64() / done * (total - step) as f64;
                tracing::info!(
                    event = "step",
                    step,
                    total,
                    epoch,
                    loss,
                    images_per_sec = ips,
                    eta_seconds = eta
                );
            }
            None => {}
        }
    }

    /// Prints a line above the bar, or logs it.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => tracing::info!("{line}"),
        }
    }

    /// Ends the bar.
    pub fn finish(&self, elapsed: Duration) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!("done in {:.1}s", elapsed.as_secs_f64()));
        }
    }
}
