//! Reasons to stop or checkpoint early: SIGTERM/SIGINT, and spot notices from the instance
//! metadata service (IMDSv2).
//!
//! Signals and the poller only set flags; the training loop reads them at step boundaries, so a
//! step is never torn. The poller talks to IMDS only when it is configured
//! (`AWS_EC2_METADATA_SERVICE_ENDPOINT`) or the machine identifies itself as EC2, and gives up
//! quietly when IMDS does not answer (SageMaker containers may have no IMDS route).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The default IMDS address on EC2.
pub const IMDS_DEFAULT: &str = "http://169.254.169.254";
/// AWS recommends polling the spot endpoints every five seconds.
pub const POLL_EVERY: Duration = Duration::from_secs(5);

/// Flags shared between the signal handlers, the poller and the training loop.
#[derive(Clone, Default)]
pub struct StopFlags {
    /// SIGTERM or SIGINT arrived.
    pub signal: Arc<AtomicBool>,
    /// IMDS announced a spot interruption.
    pub spot_notice: Arc<AtomicBool>,
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

    /// Takes a pending rebalance recommendation (once per notice).
    pub fn take_rebalance(&self) -> bool {
        self.rebalance.swap(false, Ordering::SeqCst)
    }
}

/// Where to poll IMDS, if anywhere: an explicit endpoint, or the default on EC2 hardware.
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

/// What one IMDS poll saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notices {
    /// `spot/instance-action` answered (an interruption is scheduled).
    pub spot: Option<String>,
    /// `events/recommendations/rebalance` answered.
    pub rebalance: Option<String>,
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

/// Starts the background poller; it stops by itself after repeated failures.
pub fn spawn_imds_poller(
    base: String,
    flags: StopFlags,
    every: Duration,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("imds-poller".into())
        .spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .http_status_as_error(false)
                .build()
                .into();
            let mut failures = 0;
            let mut rebalance_seen = false;
            loop {
                match poll_once(&agent, &base) {
                    Ok(n) => {
                        failures = 0;
                        if let Some(action) = n.spot {
                            tracing::warn!(event = "spot_notice", action = %action.trim(), "spot interruption notice: checkpointing and stopping");
                            flags.spot_notice.store(true, Ordering::SeqCst);
                            return;
                        }
                        if n.rebalance.is_some() && !rebalance_seen {
                            rebalance_seen = true;
                            tracing::info!(event = "rebalance_recommendation", "rebalance recommendation: taking an extra checkpoint");
                            flags.rebalance.store(true, Ordering::SeqCst);
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= 3 {
                            tracing::info!(event = "imds_unavailable", error = %e, "instance metadata service not answering; spot-notice polling off (SIGTERM still handled)");
                            return;
                        }
                    }
                }
                if flags.signal.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(every);
            }
        })
        .expect("spawning a thread at start-up")
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
    }
}
