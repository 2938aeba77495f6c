//! The launcher's shell: the child process, signals, reaping, the notice and failure files.
//!
//! Owns every system call; decides nothing. Events (signals, IMDS notices, the child's exit,
//! the deadline) go through one channel into the [`Supervisor`], and its actions are carried
//! out here in order.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{
    getpid, kill_process, kill_process_group, set_child_subreaper, wait, Pid, Signal, WaitOptions,
};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::imds::{spawn_poller, Notice};
use crate::supervise::{Action, ChildExit, Event, Notices, StopSignal, Supervisor};
use crate::NOTICE_FILE_ENV;

/// Bytes of the child's standard error kept for the failure reason.
const TAIL_BYTES: usize = 4096;
/// How long to wait, after the child exits, for the rest of its standard error.
const STDERR_DRAIN: Duration = Duration::from_secs(2);

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The training command and its arguments.
    pub command: Vec<OsString>,
    /// Time between the first stop request and SIGKILL of the group.
    pub grace: Duration,
    /// Where to write notices (given to the child as `SPOTCHECK_NOTICE_FILE`).
    pub notice_file: PathBuf,
    /// SageMaker's failure file.
    pub failure_file: PathBuf,
    /// IMDS endpoint and poll interval, when IMDS is to be polled.
    pub imds: Option<(String, Duration)>,
}

/// SageMaker's failure file: `SM_OUTPUT_FAILURE`, else `$SPOTCHECK_OPT_ML/output/failure`,
/// else `/opt/ml/output/failure` (the trainer's rule, trainer/src/sagemaker.rs).
pub fn failure_file(var: impl Fn(&str) -> Option<String>) -> PathBuf {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(path) = set("SM_OUTPUT_FAILURE") {
        return PathBuf::from(path);
    }
    PathBuf::from(set("SPOTCHECK_OPT_ML").unwrap_or_else(|| "/opt/ml".into()))
        .join("output/failure")
}

/// Whether a process catches `signal`, from its `/proc/PID/status` (the `SigCgt` mask).
pub fn catches_signal(proc_status: &str, signal: i32) -> bool {
    proc_status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| (1..=64).contains(&signal) && mask & (1 << (signal - 1)) != 0)
}

/// What arrives on the launcher's channel.
enum Msg {
    Signal(i32),
    Notice(Notice),
}

/// Runs the launcher until the child exits; returns the exit code to exit with.
pub fn run(config: Config) -> io::Result<u8> {
    let command_text = shown(&config.command);
    let Some((program, args)) = config.command.split_first() else {
        return Err(io::Error::other("no command given"));
    };
    // PID 1 in a container reaps orphans anyway; elsewhere, become their reaper.
    let _ = set_child_subreaper(Some(getpid()));

    let (tx, rx) = mpsc::channel::<Msg>();
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGCHLD])?;
    let signals_handle = signals.handle();
    {
        let tx = tx.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if tx.send(Msg::Signal(signal)).is_err() {
                        return;
                    }
                }
            })?;
    }

    let mut supervisor = Supervisor::new(command_text.clone(), config.grace);
    write_notices(&config.notice_file, supervisor.notices())?;

    let mut child = match Command::new(program)
        .args(args)
        .process_group(0)
        .env(NOTICE_FILE_ENV, &config.notice_file)
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            let code = if err.kind() == io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
            let reason = format!("cannot run `{command_text}`: {err}");
            eprintln!("spotcheck run: {reason}");
            write_failure(&config.failure_file, &reason);
            let _ = fs::remove_file(&config.notice_file);
            signals_handle.close();
            return Ok(code);
        }
    };
    let pid = Pid::from_child(&child);

    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let (drained_tx, drained) = mpsc::channel::<()>();
    if let Some(mut stderr) = child.stderr.take() {
        let tail = Arc::clone(&tail);
        thread::Builder::new()
            .name("stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                let mut out = io::stderr();
                loop {
                    match stderr.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let _ = out.write_all(&buf[..n]);
                            if let Ok(mut t) = tail.lock() {
                                t.extend_from_slice(&buf[..n]);
                                let excess = t.len().saturating_sub(TAIL_BYTES);
                                t.drain(..excess);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = drained_tx.send(());
            })?;
    }

    let stop_polling = Arc::new(AtomicBool::new(false));
    if let Some((endpoint, every)) = &config.imds {
        let tx = tx.clone();
        spawn_poller(
            endpoint.clone(),
            *every,
            move |notice| {
                let _ = tx.send(Msg::Notice(notice));
            },
            Arc::clone(&stop_polling),
        )?;
    }
    drop(tx);

    let code = loop {
        let msg = match supervisor.deadline() {
            Some(deadline) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break 1,
                }
            }
            None => match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => break 1,
            },
        };
        let events = match msg {
            None => vec![Event::Deadline],
            Some(Msg::Signal(SIGCHLD)) => reap(pid)
                .map(|exit| vec![Event::ChildExited(exit)])
                .unwrap_or_default(),
            Some(Msg::Signal(SIGINT)) => vec![Event::Signal(StopSignal::Int)],
            Some(Msg::Signal(_)) => vec![Event::Signal(StopSignal::Term)],
            Some(Msg::Notice(Notice::Spot(body))) => {
                eprintln!("spotcheck run: spot interruption notice: {}", body.trim());
                vec![Event::SpotNotice(body)]
            }
            Some(Msg::Notice(Notice::Rebalance(body))) => {
                eprintln!("spotcheck run: rebalance recommendation: {}", body.trim());
                vec![Event::Rebalance(body)]
            }
        };
        let mut exit = None;
        for event in events {
            if matches!(event, Event::ChildExited(_)) {
                // The child is gone: let its last words reach the pipe reader (bounded, since
                // a grandchild may hold the pipe open).
                let _ = drained.recv_timeout(STDERR_DRAIN);
            }
            let tail_text = tail
                .lock()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            for action in supervisor.on(event, Instant::now(), &tail_text) {
                match action {
                    Action::WriteNotices(notices) => {
                        if let Err(err) = write_notices(&config.notice_file, &notices) {
                            eprintln!(
                                "spotcheck run: cannot write {}: {err}",
                                config.notice_file.display()
                            );
                        }
                    }
                    Action::Signal(number) => send(pid, number),
                    Action::AnnounceRebalance => {
                        let status =
                            fs::read_to_string(format!("/proc/{}/status", pid.as_raw_pid()))
                                .unwrap_or_default();
                        if catches_signal(&status, SIGUSR1) {
                            send(pid, SIGUSR1);
                        }
                    }
                    Action::KillGroup => {
                        eprintln!(
                            "spotcheck run: grace time of {} s is over; killing the training process group",
                            config.grace.as_secs()
                        );
                        let _ = kill_process_group(pid, Signal::KILL);
                    }
                    Action::WriteFailure(reason) => write_failure(&config.failure_file, &reason),
                    Action::Exit(code) => exit = Some(code),
                }
            }
        }
        if let Some(code) = exit {
            break code;
        }
    };
    stop_polling.store(true, Ordering::SeqCst);
    signals_handle.close();
    let _ = fs::remove_file(&config.notice_file);
    Ok(code)
}

/// Reaps every exited child (orphans included); returns the training process's exit when it
/// is among them.
fn reap(pid: Pid) -> Option<ChildExit> {
    let mut ours = None;
    loop {
        // `wait`, not `waitpid(None)`: the latter is wait4(0), this process group only, and
        // the training command runs in a group of its own.
        match wait(WaitOptions::NOHANG) {
            Ok(Some((reaped, status))) => {
                if reaped == pid {
                    ours = status
                        .exit_status()
                        .map(ChildExit::Code)
                        .or_else(|| status.terminating_signal().map(ChildExit::Signal));
                }
            }
            Ok(None) => return ours,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return ours,
        }
    }
}

fn send(pid: Pid, number: i32) {
    if let Some(signal) = Signal::from_named_raw(number) {
        // The child may have exited already; its exit arrives as SIGCHLD.
        let _ = kill_process(pid, signal);
    }
}

/// Replaces the notice file atomically (write a sibling, rename over).
fn write_notices(path: &Path, notices: &Notices) -> io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let body = serde_json::to_vec(notices).map_err(io::Error::other)?;
    fs::write(&temp, body)?;
    fs::rename(&temp, path)
}

/// Writes the failure reason, unless the child already left one (its own reason is better),
/// or there is no folder for it (not in a SageMaker container).
fn write_failure(path: &Path, reason: &str) {
    if fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return;
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => {
            if let Err(err) = fs::write(path, reason) {
                eprintln!("spotcheck run: cannot write {}: {err}", path.display());
            }
        }
        _ => eprintln!("spotcheck run: {reason}"),
    }
}

/// The command as a person would type it.
fn shown(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_file_follows_sagemakers_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            failure_file(env(&[])),
            PathBuf::from("/opt/ml/output/failure")
        );
        assert_eq!(
            failure_file(env(&[("SPOTCHECK_OPT_ML", "/tmp/x")])),
            PathBuf::from("/tmp/x/output/failure")
        );
        assert_eq!(
            failure_file(env(&[
                ("SM_OUTPUT_FAILURE", "/f"),
                ("SPOTCHECK_OPT_ML", "/tmp/x")
            ])),
            PathBuf::from("/f")
        );
        assert_eq!(
            failure_file(env(&[("SM_OUTPUT_FAILURE", "")])),
            PathBuf::from("/opt/ml/output/failure")
        );
    }

    #[test]
    fn sigcgt_tells_whether_sigusr1_is_caught() {
        // Python with a SIGUSR1 handler: bit 9 (signal 10) set, alongside SIGINT (2).
        let caught = "Name:\tpython\nSigIgn:\t0000000001001000\nSigCgt:\t0000000180000202\n";
        assert!(catches_signal(caught, SIGUSR1));
        assert!(catches_signal(caught, SIGINT));
        assert!(!catches_signal(caught, SIGTERM));
        assert!(!catches_signal("SigCgt:\t0000000000000000\n", SIGUSR1));
        assert!(!catches_signal("no such line", SIGUSR1));
        assert!(!catches_signal("SigCgt:\tzz\n", SIGUSR1));
    }
}
