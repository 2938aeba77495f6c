//! Spot notices from the instance metadata service (IMDSv2), behind a narrow trait.
//!
//! The rules are the trainer's (trainer/src/signals.rs): poll only where IMDS can exist (an
//! explicit endpoint, or EC2 hardware; `SPOTCHECK_IMDS=on|off` overrides), every 5 s as AWS
//! recommends; a spot interruption notice is reported once and ends polling; the first
//! rebalance recommendation is reported once; three failures in a row turn polling off
//! quietly (SageMaker containers may have no route to IMDS; SIGTERM still works). The
//! decisions are the pure [`PollState`]; [`NoticeSource`] is the only thing that talks HTTP,
//! so the source can be swapped for the shared notices crate's poller in one place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The default IMDS address on EC2.
pub const IMDS_DEFAULT: &str = "http://169.254.169.254";
/// AWS recommends polling the spot endpoints every five seconds.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// Consecutive failures after which polling stops.
pub const GIVE_UP_AFTER: u32 = 3;

/// Where to poll IMDS, if anywhere: `mode` (`SPOTCHECK_IMDS`) `off` never, `on` always (the
/// given endpoint or the default); otherwise an explicit endpoint
/// (`AWS_EC2_METADATA_SERVICE_ENDPOINT`), or the default on EC2 hardware (DMI vendor).
pub fn imds_endpoint(
    env_endpoint: Option<String>,
    dmi_vendor: Option<String>,
    mode: Option<String>,
) -> Option<String> {
    let env_endpoint = env_endpoint.filter(|e| !e.is_empty());
    match mode.as_deref() {
        Some("off") => return None,
        Some("on") => return Some(env_endpoint.unwrap_or_else(|| IMDS_DEFAULT.to_string())),
        _ => {}
    }
    if let Some(endpoint) = env_endpoint {
        return Some(endpoint);
    }
    dmi_vendor
        .filter(|v| v.contains("Amazon EC2"))
        .map(|_| IMDS_DEFAULT.to_string())
}

/// What one poll saw: each endpoint's body when it answered 200.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `spot/instance-action`: an interruption is scheduled.
    pub spot: Option<String>,
    /// `events/recommendations/rebalance`.
    pub rebalance: Option<String>,
}

/// A notice to pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Spot interruption: checkpoint and stop.
    Spot(String),
    /// Rebalance recommendation: one extra checkpoint.
    Rebalance(String),
}

/// Something that can be asked for notices.
pub trait NoticeSource: Send {
    /// One poll; `Err` carries a reason for the log.
    fn poll(&mut self) -> Result<Observed, String>;
}

/// The poller's memory, and its rules.
#[derive(Debug, Clone, Default)]
pub struct PollState {
    failures: u32,
    rebalance_seen: bool,
}

/// What to do after one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Notices to pass on now.
    pub notices: Vec<Notice>,
    /// Whether to poll again.
    pub keep_polling: bool,
}

impl PollState {
    /// Applies the rules to one poll's result.
    pub fn observe(&mut self, polled: Result<Observed, String>) -> Step {
        match polled {
            Ok(seen) => {
                self.failures = 0;
                let mut notices = Vec::new();
                if let Some(body) = seen.rebalance {
                    if !self.rebalance_seen {
                        self.rebalance_seen = true;
                        notices.push(Notice::Rebalance(body));
                    }
                }
                let keep_polling = match seen.spot {
                    Some(body) => {
                        notices.push(Notice::Spot(body));
                        false
                    }
                    None => true,
                };
                Step {
                    notices,
                    keep_polling,
                }
            }
            Err(_) => {
                self.failures += 1;
                Step {
                    notices: Vec::new(),
                    keep_polling: self.failures < GIVE_UP_AFTER,
                }
            }
        }
    }
}

/// IMDSv2 over HTTP.
pub struct Imds {
    agent: ureq::Agent,
    base: String,
}

impl Imds {
    /// A client for the IMDS at `base` (e.g. `http://169.254.169.254`), with a 2-second
    /// timeout per request.
    pub fn new(base: &str) -> Imds {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        Imds {
            agent,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    fn get(&self, token: &str, path: &str) -> Result<Option<String>, String> {
        let mut response = self
            .agent
            .get(format!("{}/latest/meta-data/{path}", self.base))
            .header("X-aws-ec2-metadata-token", token)
            .call()
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => response
                .body_mut()
                .read_to_string()
                .map(Some)
                .map_err(|e| e.to_string()),
            404 => Ok(None),
            other => Err(format!("{path}: HTTP {other}")),
        }
    }
}

impl NoticeSource for Imds {
    fn poll(&mut self) -> Result<Observed, String> {
        let mut token = self
            .agent
            .put(format!("{}/latest/api/token", self.base))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
            .send_empty()
            .map_err(|e| e.to_string())?;
        if token.status().as_u16() != 200 {
            return Err(format!("token: HTTP {}", token.status().as_u16()));
        }
        let token = token
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let token = token.trim();
        Ok(Observed {
            spot: self.get(token, "spot/instance-action")?,
            rebalance: self.get(token, "events/recommendations/rebalance")?,
        })
    }
}

/// Polls `source` every `every` on a background thread, passing notices to `on_notice`, until
/// the rules stop it or `stop` is set.
pub fn spawn_poller(
    mut source: Box<dyn NoticeSource>,
    every: Duration,
    mut on_notice: impl FnMut(Notice) + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("imds-poller".into())
        .spawn(move || {
            let mut state = PollState::default();
            while !stop.load(Ordering::SeqCst) {
                let step = state.observe(source.poll());
                for notice in step.notices {
                    on_notice(notice);
                }
                if !step.keep_polling {
                    return;
                }
                thread::sleep(every);
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
            imds_endpoint(None, Some("Amazon EC2\n".into()), None).as_deref(),
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
    fn a_spot_notice_is_passed_once_and_ends_polling() {
        let mut s = PollState::default();
        let step = s.observe(Ok(Observed {
            spot: Some("{\"action\":\"terminate\"}".into()),
            rebalance: Some("{}".into()),
        }));
        assert_eq!(
            step.notices,
            vec![
                Notice::Rebalance("{}".into()),
                Notice::Spot("{\"action\":\"terminate\"}".into())
            ]
        );
        assert!(!step.keep_polling);
    }

    #[test]
    fn the_first_rebalance_only_and_three_failures_in_a_row_stop_polling() {
        let mut s = PollState::default();
        let rebalance = || {
            Ok(Observed {
                spot: None,
                rebalance: Some("{}".into()),
            })
        };
        assert_eq!(s.observe(rebalance()).notices.len(), 1);
        assert!(s.observe(rebalance()).notices.is_empty());
        assert!(s.observe(Err("timeout".into())).keep_polling);
        assert!(s.observe(Err("timeout".into())).keep_polling);
        assert!(
            s.observe(Ok(Observed::default())).keep_polling,
            "a success resets"
        );
        assert!(s.observe(Err("x".into())).keep_polling);
        assert!(s.observe(Err("x".into())).keep_polling);
        assert!(!s.observe(Err("x".into())).keep_polling);
    }
}
