//! `spotcheck run` driven as a container runtime would: real child processes (`sh`), real
//! signals, a fake IMDS on loopback. Waits are for observable conditions (a line, a file, a
//! process gone), each bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spotcheck");
const LIMIT: Duration = Duration::from_secs(30);

/// `spotcheck run [flags] -- sh -c SCRIPT`, stdout piped, IMDS off unless the flags say.
fn launch(dir: &Path, flags: &[&str], script: &str, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .args(flags)
        .args(["--", "sh", "-c", script])
        .env("SPOTCHECK_IMDS", "off")
        .env("SM_OUTPUT_FAILURE", dir.join("failure"))
        .env("DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spotcheck run starts")
}

/// Reads stdout lines until one equals `want`.
fn wait_line(child: &mut Child, want: &str) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).expect("reading stdout");
        assert!(n > 0, "stdout ended before {want:?}");
        if line.trim_end() == want {
            return out;
        }
    }
}

/// Polls `cond` until it holds or [`LIMIT`] passes.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the launcher to exit; its code.
fn finish(mut child: Child) -> (i32, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        assert!(start.elapsed() < LIMIT, "spotcheck run did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Whether a process is running (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Whether a process still exists at all (a zombie counts: not reaped yet).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(path: &Path) -> u32 {
    let mut text = String::new();
    eventually("the pid file", || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n')
    });
    text.trim().parse().expect("a pid")
}

#[test]
fn run_passes_the_exit_code_through_and_reports_signals_as_128_plus() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _) = finish(launch(dir.path(), &[], "exit 7", &[]));
    assert_eq!(code, 7);
    let (code, _) = finish(launch(dir.path(), &[], "exit 0", &[]));
    assert_eq!(code, 0);
    let (code, _) = finish(launch(dir.path(), &[], "kill -KILL $$", &[]));
    assert_eq!(code, 137);
}

#[test]
fn run_forwards_sigterm_and_exits_with_the_childs_143_without_a_failure_file() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        r#"trap 'echo term > "$DIR/got"; exit 143' TERM; echo ready; while :; do sleep 0.05; done"#;
    let mut child = launch(dir.path(), &[], script, &[]);
    let _out = wait_line(&mut child, "ready");
    signal(child.id(), "TERM");
    let (code, _) = finish(child);
    assert_eq!(code, 143);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("got")).unwrap(),
        "term\n"
    );
    assert!(
        !dir.path().join("failure").exists(),
        "a stop is not a failure"
    );
}

#[test]
fn run_sigkills_the_whole_group_once_the_grace_time_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"trap '' TERM; sleep 60 & echo $! > "$DIR/pid"; echo ready; wait"#;
    let mut child = launch(dir.path(), &["--grace-seconds", "1"], script, &[]);
    let _out = wait_line(&mut child, "ready");
    let grandchild = read_pid(&dir.path().join("pid"));
    let asked = Instant::now();
    signal(child.id(), "TERM");
    let (code, err) = finish(child);
    assert_eq!(code, 137, "{err}");
    assert!(asked.elapsed() >= Duration::from_secs(1), "grace honoured");
    assert!(err.contains("grace time of 1 s is over"), "{err}");
    eventually("the group's other process to be killed", || {
        !running(grandchild)
    });
}

#[test]
fn run_reaps_orphans_while_the_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    // The subshell exits at once; its `sleep` is orphaned and reparented to the launcher.
    let script = r#"(sleep 0.2 & echo $! > "$DIR/pid"); echo ready; read line; exit 0"#;
    let mut child = launch(dir.path(), &[], script, &[]);
    let _out = wait_line(&mut child, "ready");
    let orphan = read_pid(&dir.path().join("pid"));
    eventually("the orphan to be reaped (not left a zombie)", || {
        !exists(orphan)
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the command is still running"
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert_eq!(finish(child).0, 0);
}

#[test]
fn run_writes_the_failure_file_with_the_end_of_stderr_and_never_over_the_childs_own() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"echo 'Traceback (most recent call last):' >&2; echo 'ValueError: bad input' >&2; exit 3"#;
    let (code, err) = finish(launch(dir.path(), &[], script, &[]));
    assert_eq!(code, 3);
    assert!(
        err.contains("ValueError: bad input"),
        "stderr passes through: {err}"
    );
    let reason = std::fs::read_to_string(dir.path().join("failure")).unwrap();
    assert!(reason.starts_with("training command `sh -c "), "{reason}");
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(reason.ends_with("ValueError: bad input"), "{reason}");

    let own = r#"echo 'my own reason' > "$DIR/failure"; exit 1"#;
    std::fs::remove_file(dir.path().join("failure")).unwrap();
    assert_eq!(finish(launch(dir.path(), &[], own, &[])).0, 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("failure")).unwrap(),
        "my own reason\n"
    );
}

#[test]
fn run_reports_a_command_that_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["run", "--", "/nonexistent/train"])
        .env("SPOTCHECK_IMDS", "off")
        .env("SM_OUTPUT_FAILURE", dir.path().join("failure"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let reason = std::fs::read_to_string(dir.path().join("failure")).unwrap();
    assert!(
        reason.contains("cannot run `/nonexistent/train`"),
        "{reason}"
    );
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let out = Command::new(BIN).args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_command_sees_the_notice_file_before_any_notice() {
    let dir = tempfile::tempdir().unwrap();
    let notices = dir.path().join("notices.json");
    let out = Command::new(BIN)
        .args(["run", "--notice-file"])
        .arg(&notices)
        .args([
            "--",
            "sh",
            "-c",
            r#"echo "$SPOTCHECK_NOTICE_FILE"; cat "$SPOTCHECK_NOTICE_FILE""#,
        ])
        .env("SPOTCHECK_IMDS", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let (path, body) = text.split_once('\n').unwrap();
    assert_eq!(Path::new(path), notices);
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["seq"], 0);
    assert_eq!(v["stop"], serde_json::Value::Null);
    assert_eq!(v["rebalance"], 0);
    assert!(!notices.exists(), "removed when the launcher exits");
}

/// A minimal IMDSv2 on loopback: token, spot/instance-action and the rebalance endpoint answer
/// 404 until a body is set.
struct FakeImds {
    url: String,
    spot: Arc<Mutex<Option<String>>>,
    rebalance: Arc<Mutex<Option<String>>>,
}

impl FakeImds {
    fn start() -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spot = Arc::new(Mutex::new(None::<String>));
        let rebalance = Arc::new(Mutex::new(None::<String>));
        let (s, r) = (Arc::clone(&spot), Arc::clone(&rebalance));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut header = String::new();
                while reader
                    .read_line(&mut header)
                    .map(|n| n > 2)
                    .unwrap_or(false)
                {
                    header.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let body = if request.starts_with("PUT") && path == "/latest/api/token" {
                    Some("token".to_string())
                } else if path == "/latest/meta-data/spot/instance-action" {
                    s.lock().unwrap().clone()
                } else if path == "/latest/meta-data/events/recommendations/rebalance" {
                    r.lock().unwrap().clone()
                } else {
                    None
                };
                let response = match body {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    }
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        FakeImds {
            url,
            spot,
            rebalance,
        }
    }
}

fn notices_file(path: &PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn spot_notices_become_sigterm_and_rebalances_sigusr1_with_the_notice_file_first() {
    let dir = tempfile::tempdir().unwrap();
    let imds = FakeImds::start();
    let notices = dir.path().join("notices.json");
    let script = r#"trap 'echo usr1 >> "$DIR/usr1"' USR1
trap 'cp "$SPOTCHECK_NOTICE_FILE" "$DIR/at-term.json"; exit 143' TERM
echo ready; while :; do sleep 0.05; done"#;
    let mut child = launch(
        dir.path(),
        &[
            "--imds-poll-seconds",
            "0.05",
            "--notice-file",
            notices.to_str().unwrap(),
        ],
        script,
        &[
            ("SPOTCHECK_IMDS", "on"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url),
        ],
    );
    let _out = wait_line(&mut child, "ready");
    *imds.rebalance.lock().unwrap() = Some(r#"{"noticeTime":"2026-11-29T12:00:00Z"}"#.into());
    eventually("SIGUSR1 for the rebalance", || {
        dir.path().join("usr1").exists()
    });
    assert_eq!(notices_file(&notices)["rebalance"], 1);
    assert!(
        child.try_wait().unwrap().is_none(),
        "a rebalance is not a stop"
    );

    let body = r#"{"action":"terminate","time":"2026-11-29T12:02:00Z"}"#;
    *imds.spot.lock().unwrap() = Some(body.into());
    let (code, _) = finish(child);
    assert_eq!(code, 143);
    let seen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("at-term.json")).unwrap()).unwrap();
    assert_eq!(seen["stop"], "spot-notice");
    assert_eq!(seen["spot_notice"], body);
    assert_eq!(seen["rebalance"], 1);
    assert!(!dir.path().join("failure").exists());
}

#[test]
fn a_rebalance_never_signals_a_command_that_does_not_catch_sigusr1() {
    let dir = tempfile::tempdir().unwrap();
    let imds = FakeImds::start();
    let notices = dir.path().join("notices.json");
    let mut child = launch(
        dir.path(),
        &[
            "--imds-poll-seconds",
            "0.05",
            "--notice-file",
            notices.to_str().unwrap(),
        ],
        "echo ready; read line; exit 0",
        &[
            ("SPOTCHECK_IMDS", "on"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url),
        ],
    );
    let _out = wait_line(&mut child, "ready");
    *imds.rebalance.lock().unwrap() = Some("{}".into());
    eventually("the rebalance in the notice file", || {
        notices_file(&notices)["rebalance"] == 1
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    assert_eq!(
        finish(child).0,
        0,
        "SIGUSR1's default action would have killed it"
    );
}
