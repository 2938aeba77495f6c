//! What the launcher does about each thing that happens: a pure state machine.
//!
//! Owns the rules, as data in and actions out, so they are tested without processes or
//! clocks: a stop signal is forwarded to the training process and starts the grace deadline;
//! a spot notice is written to the notice file and delivered as SIGTERM (the same stop as
//! SageMaker's); a rebalance recommendation is written and announced with SIGUSR1; a passed
//! deadline kills the whole process group; the child's exit becomes the launcher's exit code,
//! and a failure file when it failed on its own (not while stopping). Nothing here reads a
//! clock: times come in with the events.

use std::time::{Duration, Instant};

use serde::Serialize;

/// A stop signal the launcher receives and forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StopSignal {
    /// SIGTERM: SageMaker's stop, the stopping condition, `docker stop`.
    #[serde(rename = "SIGTERM")]
    Term,
    /// SIGINT: Ctrl-C.
    #[serde(rename = "SIGINT")]
    Int,
}

impl StopSignal {
    /// The signal number.
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Term => signal_hook::consts::SIGTERM,
            StopSignal::Int => signal_hook::consts::SIGINT,
        }
    }
}

/// How the training process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ChildExit {
    /// The launcher's exit code: the child's own, or 128 + the signal, as shells report it.
    pub fn exit_code(self) -> u8 {
        match self {
            ChildExit::Code(code) => (code & 0xff) as u8,
            ChildExit::Signal(signal) => (128 + (signal & 0x7f)) as u8,
        }
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The launcher received SIGTERM or SIGINT.
    Signal(StopSignal),
    /// IMDS announced a spot interruption; its body.
    SpotNotice(String),
    /// IMDS announced a rebalance recommendation; its body.
    Rebalance(String),
    /// The grace deadline passed.
    Deadline,
    /// The training process ended.
    ChildExited(ChildExit),
}

/// Something to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Replace the notice file with the current [`Notices`].
    WriteNotices(Notices),
    /// Send this signal to the training process (the group leader only: it decides what its
    /// workers do).
    Signal(i32),
    /// Send SIGUSR1 to the training process if it catches it (the package does); otherwise
    /// the notice file alone carries the recommendation.
    AnnounceRebalance,
    /// SIGKILL the training process's whole group: the grace time is over.
    KillGroup,
    /// Write this reason to the failure file (unless something already wrote one).
    WriteFailure(String),
    /// Exit with this code.
    Exit(u8),
}

/// What the notice file says: the contract with the training process (docs/pytorch.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Notices {
    /// Bumped on every change, so a reader can tell a new notice from one it has seen.
    pub seq: u64,
    /// Why training should stop: `"signal"` or `"spot-notice"`; `null` while it should not.
    pub stop: Option<&'static str>,
    /// The signal that asked for the stop, when one did.
    pub signal: Option<StopSignal>,
    /// The spot interruption notice's body (`{"action": …, "time": …}`), once one came.
    pub spot_notice: Option<String>,
    /// Rebalance recommendations so far: each asks for one extra checkpoint.
    pub rebalance: u64,
    /// The latest rebalance recommendation's body.
    pub rebalance_notice: Option<String>,
}

/// The launcher's state.
#[derive(Debug, Clone)]
pub struct Supervisor {
    grace: Duration,
    deadline: Option<Instant>,
    stopping: bool,
    killed: bool,
    notices: Notices,
    command: String,
}

impl Supervisor {
    /// A supervisor for `command` (shown in failure reasons) with `grace` between the first
    /// stop request and the SIGKILL of the group.
    pub fn new(command: String, grace: Duration) -> Supervisor {
        Supervisor {
            grace,
            deadline: None,
            stopping: false,
            killed: false,
            notices: Notices::default(),
            command,
        }
    }

    /// The notice file's contents now.
    pub fn notices(&self) -> &Notices {
        &self.notices
    }

    /// When the group gets SIGKILL, if a stop is under way.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Decides what to do about `event`, which happened at `now`. `stderr_tail` is the end of
    /// the child's standard error, for a failure reason.
    pub fn on(&mut self, event: Event, now: Instant, stderr_tail: &str) -> Vec<Action> {
        match event {
            Event::Signal(signal) => {
                let mut actions = Vec::new();
                if self.begin_stop(now) {
                    self.notices.stop = Some("signal");
                    self.notices.signal = Some(signal);
                    actions.push(self.write());
                }
                actions.push(Action::Signal(signal.number()));
                actions
            }
            Event::SpotNotice(body) => {
                if self.notices.spot_notice.is_some() {
                    return Vec::new();
                }
                self.notices.spot_notice = Some(body);
                let first = self.begin_stop(now);
                if first {
                    self.notices.stop = Some("spot-notice");
                }
                let mut actions = vec![self.write()];
                if first {
                    actions.push(Action::Signal(signal_hook::consts::SIGTERM));
                }
                actions
            }
            Event::Rebalance(body) => {
                self.notices.rebalance += 1;
                self.notices.rebalance_notice = Some(body);
                vec![self.write(), Action::AnnounceRebalance]
            }
            Event::Deadline => match self.deadline {
                Some(deadline) if now >= deadline && !self.killed => {
                    self.killed = true;
                    self.deadline = None;
                    vec![Action::KillGroup]
                }
                _ => Vec::new(),
            },
            Event::ChildExited(exit) => {
                let mut actions = Vec::new();
                if exit != ChildExit::Code(0) && !self.stopping {
                    actions.push(Action::WriteFailure(failure_reason(
                        &self.command,
                        exit,
                        stderr_tail,
                    )));
                }
                actions.push(Action::Exit(exit.exit_code()));
                actions
            }
        }
    }

    /// Marks the stop and starts the deadline; `true` the first time.
    fn begin_stop(&mut self, now: Instant) -> bool {
        if self.stopping {
            return false;
        }
        self.stopping = true;
        self.deadline = Some(now + self.grace);
        true
    }

    fn write(&mut self) -> Action {
        self.notices.seq += 1;
        Action::WriteNotices(self.notices.clone())
    }
}

/// SageMaker shows at most 1024 characters of the failure file as the job's FailureReason.
pub const MAX_FAILURE_REASON: usize = 1024;

/// The failure reason: what ended the command, then the last lines of its standard error,
/// cut to [`MAX_FAILURE_REASON`] bytes on a character boundary (the end is kept: a Python
/// traceback's last line names the error).
pub fn failure_reason(command: &str, exit: ChildExit, stderr_tail: &str) -> String {
    let what = match exit {
        ChildExit::Code(code) => format!("training command `{command}` exited with code {code}"),
        ChildExit::Signal(signal) => {
            format!("training command `{command}` was killed by signal {signal}")
        }
    };
    let tail = stderr_tail.trim();
    if tail.is_empty() {
        return truncate_front(&what, MAX_FAILURE_REASON);
    }
    let head = truncate_front(&what, MAX_FAILURE_REASON / 2);
    let room = MAX_FAILURE_REASON.saturating_sub(head.len() + 2);
    format!("{head}: {}", truncate_back(tail, room))
}

/// The first `max` bytes of `text`, on a character boundary.
fn truncate_front(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The last `max` bytes of `text`, on a character boundary.
fn truncate_back(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: i32 = signal_hook::consts::SIGTERM;

    fn sup() -> (Supervisor, Instant) {
        (
            Supervisor::new("python train.py".into(), Duration::from_secs(100)),
            Instant::now(),
        )
    }

    fn only_notices(actions: &[Action]) -> &Notices {
        match actions.first() {
            Some(Action::WriteNotices(n)) => n,
            other => panic!("expected a notice write first, got {other:?}"),
        }
    }

    #[test]
    fn sigterm_is_recorded_forwarded_and_starts_the_deadline_once() {
        let (mut s, t0) = sup();
        let a = s.on(Event::Signal(StopSignal::Term), t0, "");
        assert_eq!(only_notices(&a).stop, Some("signal"));
        assert_eq!(only_notices(&a).signal, Some(StopSignal::Term));
        assert_eq!(a[1], Action::Signal(TERM));
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(100)));
        // A second Ctrl-C is forwarded too but does not move the deadline.
        let later = t0 + Duration::from_secs(5);
        let a = s.on(Event::Signal(StopSignal::Int), later, "");
        assert_eq!(a, vec![Action::Signal(signal_hook::consts::SIGINT)]);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn a_spot_notice_is_written_then_delivered_as_sigterm_once() {
        let (mut s, t0) = sup();
        let body = r#"{"action":"terminate","time":"2026-11-29T12:00:00Z"}"#.to_string();
        let a = s.on(Event::SpotNotice(body.clone()), t0, "");
        let n = only_notices(&a);
        assert_eq!(n.stop, Some("spot-notice"));
        assert_eq!(n.spot_notice.as_deref(), Some(body.as_str()));
        assert_eq!(a[1], Action::Signal(TERM));
        assert!(s.on(Event::SpotNotice(body), t0, "").is_empty());
    }

    #[test]
    fn a_spot_notice_during_a_stop_is_recorded_without_another_signal() {
        let (mut s, t0) = sup();
        s.on(Event::Signal(StopSignal::Term), t0, "");
        let a = s.on(Event::SpotNotice("{}".into()), t0, "");
        assert_eq!(a.len(), 1);
        assert_eq!(only_notices(&a).stop, Some("signal"));
    }

    #[test]
    fn each_rebalance_bumps_the_count_and_is_announced() {
        let (mut s, t0) = sup();
        let a = s.on(Event::Rebalance("{\"noticeTime\":\"x\"}".into()), t0, "");
        assert_eq!(only_notices(&a).rebalance, 1);
        assert_eq!(a[1], Action::AnnounceRebalance);
        let a = s.on(Event::Rebalance("{}".into()), t0, "");
        assert_eq!(only_notices(&a).rebalance, 2);
        assert!(only_notices(&a).seq > 1);
        assert_eq!(s.deadline(), None, "a rebalance is not a stop");
    }

    #[test]
    fn the_group_is_killed_only_once_the_deadline_has_passed() {
        let (mut s, t0) = sup();
        assert!(
            s.on(Event::Deadline, t0, "").is_empty(),
            "no stop, no deadline"
        );
        s.on(Event::Signal(StopSignal::Term), t0, "");
        assert!(s
            .on(Event::Deadline, t0 + Duration::from_secs(99), "")
            .is_empty());
        assert_eq!(
            s.on(Event::Deadline, t0 + Duration::from_secs(100), ""),
            vec![Action::KillGroup]
        );
        assert!(s
            .on(Event::Deadline, t0 + Duration::from_secs(200), "")
            .is_empty());
    }

    #[test]
    fn exit_codes_pass_through_and_signals_become_128_plus() {
        assert_eq!(ChildExit::Code(0).exit_code(), 0);
        assert_eq!(ChildExit::Code(143).exit_code(), 143);
        assert_eq!(ChildExit::Code(7).exit_code(), 7);
        assert_eq!(ChildExit::Signal(9).exit_code(), 137);
        assert_eq!(ChildExit::Signal(15).exit_code(), 143);
    }

    #[test]
    fn a_failure_file_only_for_a_failure_of_its_own() {
        let (mut s, t0) = sup();
        assert_eq!(
            s.on(Event::ChildExited(ChildExit::Code(0)), t0, "noise"),
            vec![Action::Exit(0)]
        );
        let a = s.on(
            Event::ChildExited(ChildExit::Code(1)),
            t0,
            "Traceback …\nValueError: bad",
        );
        assert_eq!(
            a,
            vec![
                Action::WriteFailure(
                    "training command `python train.py` exited with code 1: Traceback …\nValueError: bad"
                        .into()
                ),
                Action::Exit(1)
            ]
        );
        let (mut s, t0) = sup();
        s.on(Event::Signal(StopSignal::Term), t0, "");
        assert_eq!(
            s.on(Event::ChildExited(ChildExit::Signal(9)), t0, ""),
            vec![Action::Exit(137)],
            "killed at the deadline while stopping: SageMaker is stopping the job anyway"
        );
    }

    #[test]
    fn failure_reasons_fit_sagemakers_limit_and_keep_the_end() {
        let tail = format!("{}\nRuntimeError: the last line", "é".repeat(3000));
        let reason = failure_reason("x", ChildExit::Signal(11), &tail);
        assert!(reason.len() <= MAX_FAILURE_REASON, "{}", reason.len());
        assert!(reason.starts_with("training command `x` was killed by signal 11: "));
        assert!(reason.ends_with("RuntimeError: the last line"));
        let long_command = "c".repeat(5000);
        assert!(failure_reason(&long_command, ChildExit::Code(2), "").len() <= MAX_FAILURE_REASON);
    }
}
