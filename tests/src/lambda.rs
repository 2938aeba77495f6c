//! The Lambda runtime path: cargo-lambda's runtime-API emulator and a function binary run
//! against it.
//!
//! Owns starting `cargo lambda watch --only-lambda-apis` (the Lambda control plane and runtime
//! API of cargo-lambda, without building anything: the function is the binary cargo built for
//! the tests), starting the function process with the environment Lambda gives it
//! (`AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`, …) plus the function's own
//! configuration, and `cargo lambda invoke --data-file`. The same port serves Lambda's Invoke
//! API (`POST /2015-03-31/functions/NAME/invocations`, [`RuntimeApi::invoke_endpoint`]) for
//! SDK clients, with one difference from Lambda that [`as_lambda_answers`] bridges.
//! cargo-lambda comes pinned from
//! `tests/python-requirements/deploy.lock.txt` (`bash scripts/python-tools.sh deploy`, which
//! `scripts/test-all.sh` runs) into `.venv-deploy`; `CARGO_LAMBDA` names another binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::http::Reply;
use crate::proxy::RequestInfo;

/// The cargo-lambda executable; panics with how to install it when absent.
pub fn cargo_lambda() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_LAMBDA").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = crate::repo_root().join(".venv-deploy/bin/cargo-lambda");
    assert!(
        venv.exists(),
        "cargo-lambda is not installed ({} is missing): run `bash scripts/python-tools.sh \
         deploy` (scripts/test-all.sh does), or set CARGO_LAMBDA to a cargo-lambda binary",
        venv.display()
    );
    venv
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `cargo lambda watch --only-lambda-apis` on a loopback port. Killed when dropped.
pub struct RuntimeApi {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RuntimeApi {
    /// Starts the emulator and waits (bounded) until it accepts connections.
    pub async fn start() -> RuntimeApi {
        let port = free_port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("cargo-lambda-watch.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(cargo_lambda())
            .args(["lambda", "watch", "--only-lambda-apis", "--invoke-address"])
            .arg("127.0.0.1")
            .arg("--invoke-port")
            .arg(port.to_string())
            // cargo-lambda reads the workspace's metadata from the current directory.
            .current_dir(crate::repo_root())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("starting cargo lambda watch");
        let mut api = RuntimeApi {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = api.child.try_wait() {
                panic!("cargo lambda watch exited ({status}): {}", api.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cargo lambda watch did not listen on port {port} within 60 s: {}",
                api.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        api
    }

    /// What the emulator printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API` for functions served by this emulator.
    pub fn runtime_api(&self) -> String {
        format!("http://127.0.0.1:{}/.rt", self.port)
    }

    /// Where Lambda's Invoke API answers (`AWS_ENDPOINT_URL_LAMBDA` of an SDK client).
    pub fn invoke_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the function binary `exe` against this runtime API with `env` (the function's
    /// own configuration) added to Lambda's variables, serving invocations without a function
    /// name (`cargo lambda invoke`'s default). Its output goes to `log`.
    pub fn start_function(&self, exe: &Path, env: &[(String, String)], log: &Path) -> Function {
        self.spawn_function("_", self.runtime_api(), exe, env, log)
    }

    /// Like [`RuntimeApi::start_function`], serving the invocations of the function `name`:
    /// its runtime API is cargo-lambda's per-function path (`/.rt/NAME/2018-06-01/…`), so
    /// `POST /2015-03-31/functions/NAME/invocations` reaches it.
    pub fn start_named_function(
        &self,
        name: &str,
        exe: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> Function {
        let api = format!("{}/{name}", self.runtime_api());
        self.spawn_function(name, api, exe, env, log)
    }

    fn spawn_function(
        &self,
        name: &str,
        runtime_api: String,
        exe: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> Function {
        let out = std::fs::File::create(log).expect("function log");
        let err = out.try_clone().expect("function log");
        let mut cmd = Command::new(exe);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_FORMAT", "Text")
            .env("AWS_REGION", crate::emulators::REGION)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Function {
            child: cmd.spawn().expect("starting the function binary"),
            log: log.to_owned(),
        }
    }

    /// `cargo lambda invoke --data-file FILE` (JSON output). Returns (success, stdout, stderr).
    pub async fn invoke(&self, data_file: &Path) -> Invoked {
        let out = Command::new(cargo_lambda())
            .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
            .arg("--invoke-port")
            .arg(self.port.to_string())
            .arg("--data-file")
            .arg(data_file)
            .args(["--output-format", "json"])
            .env("NO_COLOR", "1")
            .current_dir(crate::repo_root())
            .stdin(Stdio::null())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(120), out)
            .await
            .expect("cargo lambda invoke answered within 120 s")
            .expect("running cargo lambda invoke");
        Invoked {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What `cargo lambda invoke` said.
#[derive(Clone, Debug)]
pub struct Invoked {
    /// Exit status 0.
    pub success: bool,
    /// Standard output (the function's response).
    pub stdout: String,
    /// Standard error (the error report on failure).
    pub stderr: String,
}

/// A running function process. Killed when dropped.
pub struct Function {
    child: Child,
    log: PathBuf,
}

impl Function {
    /// What the function printed so far (its decision lines, EMF lines, runtime logs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// cargo-lambda 1.9.2 answers an invocation whose function failed with HTTP 500 and the
/// runtime's error report (`{"errorType", "errorMessage"}`) as the body; Lambda answers HTTP
/// 200 with the header `X-Amz-Function-Error: Unhandled` and the same body ("the status code
/// in the API response doesn't reflect function errors"). This rewrite (for
/// [`FaultProxy::rewrite_replies`](crate::proxy::FaultProxy::rewrite_replies) in front of
/// [`RuntimeApi::invoke_endpoint`]) turns the one into the other, so an SDK client sees
/// Lambda's contract; any other answer passes unchanged.
pub fn as_lambda_answers(info: &RequestInfo, mut reply: Reply) -> Reply {
    let invocation = info.method == "POST" && info.path.ends_with("/invocations");
    let report = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .is_some_and(|v| v.get("errorType").is_some());
    if invocation && reply.status == 500 && report {
        reply.status = 200;
        reply.headers.insert(
            "x-amz-function-error",
            hyper::header::HeaderValue::from_static("Unhandled"),
        );
    }
    reply
}
