//! Spot notices from the instance metadata service, delivered to the launcher's event loop.
//!
//! The rules are the shared ones of `spotcheck-notices` (the trainer's and the Python
//! package's too): where IMDS is polled ([`spotcheck_notices::imds_endpoint`]), what a poll
//! means ([`spotcheck_notices::interpret`]: a spot notice once, then polling ends; a rebalance
//! recommendation once), and backing off without ever giving up while IMDS does not answer
//! ([`spotcheck_notices::retry_delay`]). This module only adds a poller that hands each notice,
//! with its body, to a callback, since the launcher writes the bodies to the notice file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use spotcheck_notices::{interpret, poll_once, retry_delay, PollStep};

pub use spotcheck_notices::{imds_endpoint, poll_interval_from_env};

/// A notice to pass on, with the body IMDS answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Spot interruption: checkpoint and stop.
    Spot(String),
    /// Rebalance recommendation: one extra checkpoint.
    Rebalance(String),
}

/// Polls IMDS at `base` every `every` on a background thread, passing notices to `on_notice`,
/// until a spot notice came or `stop` is set.
pub fn spawn_poller(
    base: String,
    every: Duration,
    mut on_notice: impl FnMut(Notice) + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("imds-poller".into())
        .spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .http_status_as_error(false)
                .build()
                .into();
            let mut failures: u32 = 0;
            let mut rebalance_seen = false;
            while !stop.load(Ordering::SeqCst) {
                match poll_once(&agent, &base) {
                    Ok(seen) => {
                        failures = 0;
                        match interpret(&seen, rebalance_seen) {
                            PollStep::Interrupt { .. } => {
                                on_notice(Notice::Spot(seen.spot.unwrap_or_default()));
                                return;
                            }
                            PollStep::Rebalance => {
                                rebalance_seen = true;
                                on_notice(Notice::Rebalance(seen.rebalance.unwrap_or_default()));
                            }
                            PollStep::Quiet => {}
                        }
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        if failures == 1 {
                            eprintln!(
                                "spotcheck run: instance metadata service at {base} not answering ({err}); still polling, with backoff"
                            );
                        }
                    }
                }
                thread::sleep(retry_delay(failures, every));
            }
        })
}
