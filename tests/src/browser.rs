//! A page opened in headless Chromium (Debian's `chromium` package), driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`: commands on fd 3, answers on fd 4, JSON
//! messages ending in NUL), so a test sees what a browser renders, without a WebSocket client
//! or a network.
//!
//! Owns [`chromium`] (where the browser is; failing, never skipping, when it is missing),
//! [`open`] (load a file, wait for its `load` event, measure it) and [`PageCheck`]: every `<svg>`
//! element's laid-out size, every `data-figure` element's text, the title, and everything the
//! page reported as an error — uncaught exceptions, `console.error`/`console.assert`, and
//! browser log entries of level error (failed loads, blocked content) — plus, when asked, a
//! full-page PNG screenshot.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// How to get the browser, for failure messages.
pub const HOW_TO_INSTALL: &str = "install Debian's Chromium: `apt-get install -y chromium` \
    (scripts/test-all.sh does it), or point SPOTCHECK_CHROMIUM at a Chromium binary";

/// The Chromium binary: `SPOTCHECK_CHROMIUM`, else `/usr/bin/chromium`. Panics (fails the
/// test) when there is none.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("SPOTCHECK_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "{} does not exist: {HOW_TO_INSTALL}",
        path.display()
    );
    path
}

/// One `<svg>` as laid out.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Svg {
    /// Width in CSS pixels.
    pub width: f64,
    /// Height in CSS pixels.
    pub height: f64,
    /// `<rect>` elements inside (bars, segments).
    pub rects: usize,
    /// `<text>` elements inside (labels).
    pub texts: usize,
}

/// What the page looked like in the browser.
#[derive(Clone, Debug, Default)]
pub struct PageCheck {
    /// `document.title`.
    pub title: String,
    /// Every `<svg>`, in document order.
    pub svgs: Vec<Svg>,
    /// `data-figure` name → text.
    pub figures: BTreeMap<String, String>,
    /// Length of the page's visible text.
    pub text_length: usize,
    /// Uncaught exceptions, console errors and browser log errors.
    pub errors: Vec<String>,
    /// The full-page screenshot, when asked for.
    pub screenshot_png: Option<Vec<u8>>,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

/// The DevTools session: commands out, messages in (a reader thread splits them at NUL).
struct Session {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    next_id: u64,
    /// Events received while waiting for an answer.
    events: Vec<Value>,
    deadline: Instant,
}

impl Session {
    fn start(profile: &Path, timeout: Duration) -> Session {
        let (cmd_read, cmd_write) = pipe();
        let (msg_read, msg_write) = pipe();
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for (from, to) in [(cmd_read, 3), (msg_write, 4)] {
                    if libc::dup2(from, to) < 0 || libc::fcntl(to, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}; {HOW_TO_INSTALL}", chromium().display()));
        // SAFETY: each descriptor came from pipe2 above and is owned by exactly one File.
        let (commands, messages_in) = unsafe {
            libc::close(cmd_read);
            libc::close(msg_write);
            (File::from_raw_fd(cmd_write), File::from_raw_fd(msg_read))
        };
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(messages_in);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        Session {
            child,
            commands,
            messages,
            next_id: 0,
            events: Vec::new(),
            deadline: Instant::now() + timeout,
        }
    }

    fn receive(&mut self, what: &str) -> Value {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.messages
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("Chromium: no answer while waiting for {what}: {e}"))
    }

    /// Sends a command (to the page's session when `session` is given) and waits for its
    /// answer, keeping the events that arrive meanwhile.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("Chromium: sending {method}: {e}"));
        loop {
            let m = self.receive(method);
            if m["id"] == id {
                if let Some(err) = m.get("error") {
                    panic!("Chromium: {method} failed: {err}");
                }
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    /// Waits for an event named `method`.
    fn wait_event(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == method) {
            return;
        }
        loop {
            let m = self.receive(method);
            let found = m["method"] == method;
            self.events.push(m);
            if found {
                return;
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MEASURE: &str = r#"JSON.stringify({
  title: document.title,
  svgs: Array.from(document.querySelectorAll('svg')).map(s => {
    const r = s.getBoundingClientRect();
    return {width: r.width, height: r.height,
            rects: s.querySelectorAll('rect').length, texts: s.querySelectorAll('text').length};
  }),
  figures: Object.fromEntries(Array.from(document.querySelectorAll('[data-figure]'))
    .map(e => [e.dataset.figure, e.textContent])),
  text_length: document.body.innerText.length
})"#;

#[derive(Deserialize)]
struct Measured {
    title: String,
    svgs: Vec<Svg>,
    figures: BTreeMap<String, String>,
    text_length: usize,
}

fn describe_errors(events: &[Value]) -> Vec<String> {
    let mut errors = Vec::new();
    for e in events {
        let p = &e["params"];
        match e["method"].as_str() {
            Some("Runtime.exceptionThrown") => errors.push(format!(
                "exception: {}",
                p["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .or(p["exceptionDetails"]["text"].as_str())
                    .unwrap_or("?")
            )),
            Some("Runtime.consoleAPICalled")
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                errors.push(format!("console.{}: {}", p["type"], p["args"]));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => errors.push(format!(
                "log ({}): {} {}",
                p["entry"]["source"].as_str().unwrap_or("?"),
                p["entry"]["text"].as_str().unwrap_or("?"),
                p["entry"]["url"].as_str().unwrap_or("")
            )),
            _ => {}
        }
    }
    errors
}

/// Opens `html` in headless Chromium at 1200 px wide, waits for its `load` event, and reports
/// what rendered (see [`PageCheck`]); `screenshot` also captures the full page as PNG. Panics
/// after `timeout` or on a protocol failure.
pub fn open(html: &Path, screenshot: bool, timeout: Duration) -> PageCheck {
    let profile = tempfile::tempdir().expect("a temporary profile directory");
    let mut s = Session::start(profile.path(), timeout);
    let target = s.call(None, "Target.createTarget", json!({"url": "about:blank"}));
    let target_id = target["targetId"].as_str().expect("a target id").to_owned();
    let attached = s.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target_id, "flatten": true}),
    );
    let session = attached["sessionId"]
        .as_str()
        .expect("a session id")
        .to_owned();
    let sid = Some(session.as_str());
    for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
        s.call(sid, domain, json!({}));
    }
    s.call(
        sid,
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    );
    let path = html
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", html.display()));
    s.events.clear();
    let nav = s.call(
        sid,
        "Page.navigate",
        json!({"url": format!("file://{}", path.display())}),
    );
    assert!(
        nav.get("errorText").is_none(),
        "Chromium could not open {}: {nav}",
        path.display()
    );
    s.wait_event("Page.loadEventFired");
    let measured = s.call(
        sid,
        "Runtime.evaluate",
        json!({"expression": MEASURE, "returnByValue": true}),
    );
    let measured: Measured = serde_json::from_str(
        measured["result"]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("the page could not be measured: {measured}")),
    )
    .expect("the measurement's JSON");
    let screenshot_png = screenshot.then(|| {
        let metrics = s.call(sid, "Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let clip = json!({"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                          "scale": 1});
        let shot = s.call(
            sid,
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true, "clip": clip}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG")
    });
    let errors = describe_errors(&s.events);
    // The browser exits (and the session's drop reaps it) without waiting for an answer.
    let _ = s
        .commands
        .write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
    PageCheck {
        title: measured.title,
        svgs: measured.svgs,
        figures: measured.figures,
        text_length: measured.text_length,
        errors,
        screenshot_png,
    }
}
