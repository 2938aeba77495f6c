//! Reasons a training process must checkpoint or stop: SIGTERM/SIGINT, and spot notices from
//! the EC2 instance metadata service (IMDSv2).
//!
//! Shared by the trainer, the `spotcheck run` launcher and the Python package, so that one set
//! of rules decides what a notice means everywhere. Signals and the poller only set flags
//! ([`StopFlags`]); the training loop reads them at step boundaries, so a step is never torn.
//!
//! The poller talks to IMDS only when it is configured (`AWS_EC2_METADATA_SERVICE_ENDPOINT`,
//! `SPOTCHECK_IMDS=on`) or the machine identifies itself as EC2 ([`imds_endpoint`]). When IMDS
//! stops answering it keeps trying with exponential backoff ([`retry_delay`]) and says so: a
//! poller that gave up after a few failures would leave a long run deaf to the one notice that
//! matters.

#![warn(missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The default IMDS address on EC2.
pub const IMDS_DEFAULT: &str = "http://169.254.169.254";
/// AWS recommends polling the spot endpoints every five seconds.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// The longest pause between polls while IMDS does not answer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Flags shared between the signal handlers, the poller and the training loop.
#[derive(Clone, Default)]
pub struct StopFlags {
    /// SIGTERM or SIGINT arrived.
    pub signal: Arc<AtomicBool>,
    /// IMDS announced a spot interruption.
    pub spot_notice: Arc<AtomicBool>,
    /// When the announced interruption happens (Unix milliseconds; 0 when unknown).
    pub spot_deadline_ms: Arc<AtomicI64>,
    /// IMDS announced a rebalance recommendation (checkpoint once, keep going).
    pub rebalance: Arc<AtomicBool>,
}

/// Why the loop should stop now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM/SIGINT (SageMaker's stop, the stopping condition, or a person).
    Signal,
    /// A spot interruption notice.
    SpotNotice,
}

impl StopFlags {
    /// Installs SIGTERM and SIGINT handlers that set the signal flag.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&self.signal))?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&self.signal))?;
        Ok(())
    }

    /// The reason to stop, if any.
    pub fn stop_reason(&self) -> Option<StopReason> {
        if self.signal.load(Ordering::SeqCst) {
            Some(StopReason::Signal)
        } else if self.spot_notice.load(Ordering::SeqCst) {
            Some(StopReason::SpotNotice)
        } else {
            None
        }
    }

    /// When the spot interruption is due (Unix milliseconds), if a notice said so.
    pub fn spot_deadline_ms(&self) -> Option<i64> {
        Some(self.spot_deadline_ms.load(Ordering::SeqCst)).filter(|&t| t > 0)
    }

    /// Takes a pending rebalance recommendation (once per notice).
    pub fn take_rebalance(&self) -> bool {
        self.rebalance.swap(false, Ordering::SeqCst)
    }
}

/// Where to poll IMDS, if anywhere: an explicit endpoint, or the default on EC2 hardware.
/// `mode` is `SPOTCHECK_IMDS`: `off` never polls, `on` always does.
pub fn imds_endpoint(
    env_endpoint: Option<String>,
    dmi_vendor: Option<String>,
    mode: Option<String>,
) -> Option<String> {
    match mode.as_deref() {
        Some("off") => return None,
        Some("on") => return Some(env_endpoint.unwrap_or_else(|| IMDS_DEFAULT.to_string())),
        _ => {}
    }
    if let Some(e) = env_endpoint {
        return Some(e);
    }
    dmi_vendor
        .filter(|v| v.contains("Amazon EC2"))
        .map(|_| IMDS_DEFAULT.to_string())
}

/// [`imds_endpoint`] from this process's environment and the machine's DMI vendor.
pub fn imds_endpoint_from_env() -> Option<String> {
    imds_endpoint(
        std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").ok(),
        std::fs::read_to_string("/sys/devices/virtual/dmi/id/sys_vendor").ok(),
        std::env::var("SPOTCHECK_IMDS").ok(),
    )
}

/// The poll interval: `SPOTCHECK_IMDS_POLL_SECONDS` when set to a positive number, else
/// AWS's recommended [`POLL_EVERY`].
pub fn poll_interval_from_env() -> Duration {
    std::env::var("SPOTCHECK_IMDS_POLL_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(POLL_EVERY, Duration::from_secs_f64)
}

/// What one IMDS poll saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notices {
    /// `spot/instance-action` answered (an interruption is scheduled): its body.
    pub spot: Option<String>,
    /// `events/recommendations/rebalance` answered: its body.
    pub rebalance: Option<String>,
}

/// The interruption time of a `spot/instance-action` body
/// (`{"action": "terminate", "time": "2017-09-18T08:22:00Z"}`), in Unix milliseconds.
pub fn spot_action_time_ms(body: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let t = time::OffsetDateTime::parse(
        v.get("time")?.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Polls IMDSv2 once: token, then the two spot endpoints (404 means no notice).
pub fn poll_once(agent: &ureq::Agent, base: &str) -> Result<Notices, ureq::Error> {
    let base = base.trim_end_matches('/');
    let mut token_resp = agent
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
        .send_empty()?;
    if token_resp.status().as_u16() != 200 {
        return Err(ureq::Error::StatusCode(token_resp.status().as_u16()));
    }
    let token = token_resp.body_mut().read_to_string()?;
    let get = |path: &str| -> Result<Option<String>, ureq::Error> {
        let mut r = agent
            .get(format!("{base}/latest/meta-data/{path}"))
            .header("X-aws-ec2-metadata-token", token.trim())
            .call()?;
        match r.status().as_u16() {
            200 => Ok(Some(r.body_mut().read_to_string()?)),
            404 => Ok(None),
            other => Err(ureq::Error::StatusCode(other)),
        }
    };
    Ok(Notices {
        spot: get("spot/instance-action")?,
        rebalance: get("events/recommendations/rebalance")?,
    })
}

/// The pause before the next poll after `failures` consecutive failed polls: the regular
/// interval while IMDS answers, then doubling up to [`MAX_BACKOFF`] — never giving up.
pub fn retry_delay(failures: u32, every: Duration) -> Duration {
    if failures == 0 {
        return every;
    }
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    every.saturating_mul(factor).min(MAX_BACKOFF.max(every))
}

/// What the poller does with one poll's result (pure, so it is tested as a table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollStep {
    /// A spot interruption is announced: set the flag (with its time) and stop polling.
    Interrupt {
        /// The interruption time, when the notice carries one.
        at_ms: Option<i64>,
    },
    /// A rebalance recommendation not seen before: ask for one extra checkpoint.
    Rebalance,
    /// Nothing new.
    Quiet,
}

/// Decides what one successful poll means; `rebalance_seen` is whether this recommendation
/// was already passed on (IMDS keeps answering it until the instance goes).
pub fn interpret(n: &Notices, rebalance_seen: bool) -> PollStep {
    if let Some(body) = &n.spot {
        return PollStep::Interrupt {
            at_ms: spot_action_time_ms(body),
        };
    }
    if n.rebalance.is_some() && !rebalance_seen {
        return PollStep::Rebalance;
    }
    PollStep::Quiet
}

/// Starts the background poller. It polls every `every` while IMDS answers, backs off (and
/// warns) while it does not, and ends after a spot notice or once a stop signal arrived.
pub fn spawn_imds_poller(
    base: String,
    flags: StopFlags,
    every: Duration,
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
            loop {
                match poll_once(&agent, &base) {
                    Ok(n) => {
                        if failures > 0 {
                            tracing::info!(event = "imds_recovered", after_failures = failures, "instance metadata service answers again");
                        }
                        failures = 0;
                        match interpret(&n, rebalance_seen) {
                            PollStep::Interrupt { at_ms } => {
                                tracing::warn!(event = "spot_notice", action = %n.spot.as_deref().unwrap_or("").trim(), "spot interruption notice: checkpointing and stopping");
                                flags.spot_deadline_ms.store(at_ms.unwrap_or(0), Ordering::SeqCst);
                                flags.spot_notice.store(true, Ordering::SeqCst);
                                return;
                            }
                            PollStep::Rebalance => {
                                rebalance_seen = true;
                                tracing::info!(event = "rebalance_recommendation", "rebalance recommendation: taking an extra checkpoint");
                                flags.rebalance.store(true, Ordering::SeqCst);
                            }
                            PollStep::Quiet => {}
                        }
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let next = retry_delay(failures, every);
                        // Say it on the first failure and whenever the backoff reaches its cap,
                        // not on every poll.
                        if failures == 1 || (next == MAX_BACKOFF && failures.is_power_of_two()) {
                            tracing::warn!(event = "imds_unavailable", error = %e, failures, retry_in_seconds = next.as_secs_f64(), "instance metadata service not answering; still polling for spot notices (SIGTERM is handled meanwhile)");
                        }
                    }
                }
                if flags.signal.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(retry_delay(failures, every));
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_is_polled_only_where_it_can_exist() {
        assert_eq!(imds_endpoint(None, None, None), None);
        assert_eq!(imds_endpoint(None, Some("QEMU".into()), None), None);
        assert_eq!(
            imds_endpoint(None, Some("Amazon EC2".into()), None).as_deref(),
            Some(IMDS_DEFAULT)
        );
        assert_eq!(
            imds_endpoint(Some("http://127.0.0.1:9".into()), None, None).as_deref(),
            Some("http://127.0.0.1:9")
        );
        assert_eq!(
            imds_endpoint(
                Some("http://x".into()),
                Some("Amazon EC2".into()),
                Some("off".into())
            ),
            None
        );
        assert_eq!(
            imds_endpoint(None, None, Some("on".into())).as_deref(),
            Some(IMDS_DEFAULT)
        );
    }

    #[test]
    fn signal_wins_over_spot_notice_and_rebalance_is_taken_once() {
        let f = StopFlags::default();
        assert_eq!(f.stop_reason(), None);
        f.spot_notice.store(true, Ordering::SeqCst);
        assert_eq!(f.stop_reason(), Some(StopReason::SpotNotice));
        f.signal.store(true, Ordering::SeqCst);
        assert_eq!(f.stop_reason(), Some(StopReason::Signal));
        f.rebalance.store(true, Ordering::SeqCst);
        assert!(f.take_rebalance());
        assert!(!f.take_rebalance());
        assert_eq!(f.spot_deadline_ms(), None);
    }

    #[test]
    fn failures_back_off_to_a_cap_and_never_stop() {
        let every = Duration::from_secs(5);
        assert_eq!(retry_delay(0, every), every);
        assert_eq!(retry_delay(1, every), Duration::from_secs(10));
        assert_eq!(retry_delay(2, every), Duration::from_secs(20));
        assert_eq!(retry_delay(3, every), Duration::from_secs(40));
        assert_eq!(retry_delay(4, every), MAX_BACKOFF);
        assert_eq!(retry_delay(u32::MAX, every), MAX_BACKOFF);
        // A poll interval above the cap is not shortened.
        assert_eq!(
            retry_delay(3, Duration::from_secs(90)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn polls_are_interpreted() {
        let spot = Notices {
            spot: Some(r#"{"action":"terminate","time":"2026-11-27T00:02:00Z"}"#.into()),
            rebalance: Some("{}".into()),
        };
        assert_eq!(
            interpret(&spot, true),
            PollStep::Interrupt {
                at_ms: Some(1_795_737_720_000)
            }
        );
        let odd = Notices {
            spot: Some("not json".into()),
            rebalance: None,
        };
        assert_eq!(interpret(&odd, false), PollStep::Interrupt { at_ms: None });
        let rebalance = Notices {
            spot: None,
            rebalance: Some(r#"{"noticeTime":"2026-11-27T00:00:00Z"}"#.into()),
        };
        assert_eq!(interpret(&rebalance, false), PollStep::Rebalance);
        assert_eq!(interpret(&rebalance, true), PollStep::Quiet);
        assert_eq!(interpret(&Notices::default(), false), PollStep::Quiet);
    }
}
