//! Spot notices from the instance metadata service (IMDSv2), served by a fake IMDS on loopback:
//! a spot interruption notice stops the run with a durable checkpoint (exit 143), and a
//! rebalance recommendation triggers one extra checkpoint while training goes on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

const TRAIN: &str = env!("CARGO_BIN_EXE_train");

/// What the fake IMDS answers, and what it was asked.
#[derive(Default)]
struct Imds {
    /// Answer `spot/instance-action` from this GET on (0-based count of such GETs).
    spot_from: Option<usize>,
    /// Answer `events/recommendations/rebalance`.
    rebalance: bool,
    /// Fail this many token requests first (500), as an IMDS that is briefly unreachable.
    fail_first: usize,
    failed: usize,
    spot_gets: usize,
    token_puts_with_ttl: usize,
    gets_with_token: usize,
}

fn serve(state: Arc<Mutex<Imds>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                headers.push(h.to_ascii_lowercase());
            }
            let len: usize = headers
                .iter()
                .find_map(|h| {
                    h.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let mut s = state.lock().unwrap();
            let has = |name: &str| headers.iter().any(|h| h.starts_with(name));
            let (status, body) = if request.starts_with("PUT /latest/api/token")
                && s.failed < s.fail_first
            {
                s.failed += 1;
                (500, String::new())
            } else if request.starts_with("PUT /latest/api/token") {
                if has("x-aws-ec2-metadata-token-ttl-seconds:") {
                    s.token_puts_with_ttl += 1;
                }
                (200, "test-token".to_string())
            } else if !has("x-aws-ec2-metadata-token: test-token") {
                (401, String::new())
            } else if request.starts_with("GET /latest/meta-data/spot/instance-action") {
                s.gets_with_token += 1;
                s.spot_gets += 1;
                match s.spot_from {
                    Some(n) if s.spot_gets > n => (
                        200,
                        r#"{"action":"terminate","time":"2026-11-27T00:02:00Z"}"#.to_string(),
                    ),
                    _ => (404, String::new()),
                }
            } else if request.starts_with("GET /latest/meta-data/events/recommendations/rebalance")
            {
                s.gets_with_token += 1;
                if s.rebalance {
                    (200, r#"{"noticeTime":"2026-11-27T00:00:00Z"}"#.to_string())
                } else {
                    (404, String::new())
                }
            } else {
                (404, String::new())
            };
            drop(s);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

fn train(endpoint: &str, dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(TRAIN);
    c.arg("--data")
        .arg("/nonexistent")
        .arg("--checkpoint-dir")
        .arg(dir.join("ck"))
        .arg("--model-dir")
        .arg(dir.join("model"))
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint)
        .env_remove("SPOTCHECK_IMDS")
        .env("SPOTCHECK_OPT_ML", dir.join("opt-ml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for hp in [
        "dataset=synthetic",
        "num_classes=4",
        "image_size=8",
        "synthetic_samples=96",
        "batch_size=16",
        "model_depth=1",
        "model_width=4",
        "model_hidden=16",
        "backend=cpu",
        "checkpoint_adaptive=false",
        "keep_checkpoints=100",
    ]
    .iter()
    .chain(extra)
    {
        c.arg("--hp").arg(hp);
    }
    c
}

fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_spot_interruption_notice_stops_the_run_with_a_durable_checkpoint() {
    // No notice on the first poll; the notice on the second (5 s later, AWS's cadence).
    let state = Arc::new(Mutex::new(Imds {
        spot_from: Some(1),
        ..Default::default()
    }));
    let endpoint = serve(Arc::clone(&state));
    let dir = tempfile::tempdir().unwrap();
    // Far more steps than fit in 5 s, so only the notice can end the run early.
    let out = train(&endpoint, dir.path(), &["epochs=100000"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&out.stdout);
    assert!(ev.iter().any(|e| e["event"] == "spot_notice"));
    let stopped = ev
        .iter()
        .find(|e| e["event"] == "stopped")
        .expect("a stopped line");
    assert_eq!(stopped["reason"], "SpotNotice");
    let step = stopped["step"].as_u64().unwrap();
    assert!(step > 0);
    assert!(dir
        .path()
        .join(format!("ck/algo-1/step-{step:012}/manifest.json"))
        .exists());
    let s = state.lock().unwrap();
    assert!(
        s.token_puts_with_ttl >= 2,
        "IMDSv2 token requested with a TTL on each poll"
    );
    assert!(s.spot_gets >= 2 && s.gets_with_token >= 3);
}

#[test]
fn a_rebalance_recommendation_takes_one_extra_checkpoint_and_training_goes_on() {
    let state = Arc::new(Mutex::new(Imds {
        rebalance: true,
        ..Default::default()
    }));
    let endpoint = serve(Arc::clone(&state));
    let dir = tempfile::tempdir().unwrap();
    let out = train(&endpoint, dir.path(), &["epochs=40"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&out.stdout);
    assert_eq!(
        ev.iter()
            .filter(|e| e["event"] == "rebalance_recommendation")
            .count(),
        1
    );
    let saved: Vec<u64> = ev
        .iter()
        .filter(|e| e["event"] == "checkpoint_saved")
        .filter_map(|e| e["step"].as_u64())
        .collect();
    let total = ev
        .iter()
        .find(|e| e["event"] == "completed")
        .and_then(|e| e["steps"].as_u64())
        .unwrap();
    // Periodic checkpoints are off: besides the final one, only the rebalance notice saved one.
    assert_eq!(saved.len(), 2, "{saved:?}");
    assert!(saved[0] < total && saved[1] == total, "{saved:?}");
}

#[test]
fn the_poller_outlasts_an_imds_outage_and_still_sees_the_notice() {
    // IMDS fails five polls in a row (the old poller gave up after three and the run never
    // heard of the interruption), then announces one.
    let state = Arc::new(Mutex::new(Imds {
        spot_from: Some(0),
        fail_first: 5,
        ..Default::default()
    }));
    let endpoint = serve(Arc::clone(&state));
    let dir = tempfile::tempdir().unwrap();
    let out = train(&endpoint, dir.path(), &["epochs=100000"])
        .env("SPOTCHECK_IMDS_POLL_SECONDS", "0.05")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ev = events(&out.stdout);
    let warnings: Vec<_> = ev
        .iter()
        .filter(|e| e["event"] == "imds_unavailable")
        .collect();
    assert!(!warnings.is_empty(), "the outage is reported");
    assert!(ev.iter().any(|e| e["event"] == "imds_recovered"));
    assert!(ev.iter().any(|e| e["event"] == "spot_notice"));
    assert_eq!(state.lock().unwrap().failed, 5);
}
