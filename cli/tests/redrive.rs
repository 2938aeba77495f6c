//! `spotcheck redrive`, driven as an operator would: the real binary against LocalStack's SQS
//! and a stand-in for Lambda's Invoke API (the fault proxy of the replay suite answering every
//! invocation itself), checking the output lines, the exit codes and what stays in the queue.
//! The redrive against the real function is `tests/replay/redrive.rs`.

use std::collections::BTreeSet;

use serde_json::Value;
use spotcheck_tests::emulators::{self, Emulators, Tuning};
use spotcheck_tests::proxy::{Fault, FaultProxy, FaultRule};

const BIN: &str = env!("CARGO_BIN_EXE_spotcheck");
const INVOKE: &str = "POST /2015-03-31/functions/sagemaker-events/invocations";

struct Ran {
    code: i32,
    lines: Vec<Value>,
    stderr: String,
}

impl Ran {
    fn summary(&self) -> &Value {
        &self
            .lines
            .last()
            .unwrap_or_else(|| panic!("no output; stderr: {}", self.stderr))["summary"]
    }

    fn results(&self) -> Vec<(String, String)> {
        self.lines[..self.lines.len() - 1]
            .iter()
            .map(|l| {
                let what = match l["result"].as_str() {
                    Some("failed") => format!("failed {}", l["error_type"].as_str().unwrap()),
                    Some(r) => r.to_owned(),
                    None => panic!("a report line without a result: {l}"),
                };
                (l["event"]["id"].as_str().unwrap_or("-").to_owned(), what)
            })
            .collect()
    }
}

async fn redrive(args: &[&str], lambda: &str) -> Ran {
    let out = tokio::process::Command::new(BIN)
        .arg("redrive")
        .args(args)
        .env("AWS_ENDPOINT_URL_LAMBDA", lambda)
        .output()
        .await
        .expect("spotcheck runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ran {
        code: out.status.code().unwrap_or(-1),
        lines: stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn event(id: &str) -> String {
    serde_json::json!({"version": "0", "id": id, "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker", "account": "000000000000", "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1", "resources": [], "detail": {"TrainingJobName": id}})
    .to_string()
}

/// Event ids of the messages in the queue (all received, then made visible again).
async fn queued(sqs: &aws_sdk_sqs::Client, url: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut handles = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(30)
            .send()
            .await
            .expect("ReceiveMessage");
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for m in messages {
            let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            ids.insert(body["id"].as_str().unwrap().to_owned());
            handles.push(m.receipt_handle.expect("a receipt handle"));
        }
    }
    for h in handles {
        sqs.change_message_visibility()
            .queue_url(url)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await
            .expect("ChangeMessageVisibility");
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_deletes_what_the_function_handled_and_exits_by_the_result() {
    let e = Emulators::from_env();
    let sqs = aws_sdk_sqs::Client::new(&emulators::sdk_config(
        &e.sqs,
        &Tuning::lambda_fast_backoff().await,
    ));
    let url = sqs
        .create_queue()
        .queue_name(emulators::unique("cli-redrive"))
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a queue URL");
    for id in ["ok-1", "refuse-me", "ok-2"] {
        sqs.send_message()
            .queue_url(&url)
            .message_body(event(id))
            .send()
            .await
            .expect("SendMessage");
    }
    // Lambda's Invoke, stood in for: `refuse-me` fails as the function reports a refusal,
    // everything else is handled. Nothing is forwarded anywhere (port 9 is discard).
    let lambda = FaultProxy::start("http://127.0.0.1:9").await;
    let refusal = FaultRule::when(
        "refusal",
        |_| true,
        Fault::Respond {
            status: 200,
            headers: vec![("x-amz-function-error".into(), "Unhandled".into())],
            body: r#"{"errorType":"Refused","errorMessage":"AWS refused; fix the cause"}"#.into(),
        },
    )
    .with_body_containing("refuse-me");
    let handled = FaultRule::when(
        "handled",
        |_| true,
        Fault::Respond {
            status: 200,
            headers: vec![],
            body: r#"{"outcome":"relaunched"}"#.into(),
        },
    );
    lambda.inject(refusal);
    lambda.inject(handled.clone());
    let args = ["--queue", url.as_str(), "--function", "sagemaker-events"];

    let dry = redrive(&[&args[..], &["--dry-run"]].concat(), &lambda.endpoint()).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.lines.len(), 4, "three report lines and the summary");
    assert_eq!(dry.summary()["would_redrive"], 3);
    assert_eq!(dry.summary()["dry_run"], true);
    assert_eq!(lambda.count(INVOKE), 0);

    let first = redrive(&args, &lambda.endpoint()).await;
    assert_eq!(first.code, 1, "a failed message makes the exit status 1");
    let mut results = first.results();
    results.sort();
    assert_eq!(
        results,
        vec![
            ("ok-1".to_owned(), "redriven".to_owned()),
            ("ok-2".to_owned(), "redriven".to_owned()),
            ("refuse-me".to_owned(), "failed Refused".to_owned()),
        ]
    );
    assert_eq!(first.summary()["redriven"], 2);
    assert_eq!(first.summary()["failed"], 1);
    assert_eq!(first.summary()["left"], 1);
    assert_eq!(lambda.count(INVOKE), 3);
    assert_eq!(
        queued(&sqs, &url).await,
        BTreeSet::from(["refuse-me".to_owned()])
    );

    // Fixed: the rerun redrives the last one and exits 0 with an empty queue.
    lambda.clear();
    lambda.inject(handled);
    let second = redrive(&args, &lambda.endpoint()).await;
    assert_eq!(second.code, 0, "{:?}", second.lines);
    assert_eq!(second.summary()["redriven"], 1);
    assert_eq!(second.summary()["left"], 0);
    assert!(queued(&sqs, &url).await.is_empty());

    // Lambda unreachable: the run stops at the first Invoke, keeps the message, exits 1.
    sqs.send_message()
        .queue_url(&url)
        .message_body(event("late"))
        .send()
        .await
        .expect("SendMessage");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let stopped = redrive(&args, &format!("http://{closed}")).await;
    assert_eq!(stopped.code, 1);
    let why = stopped.summary()["stopped"].as_str().unwrap_or_default();
    assert!(why.starts_with("Invoke failed"), "{why}");
    assert_eq!(
        queued(&sqs, &url).await,
        BTreeSet::from(["late".to_owned()])
    );
    let _ = sqs.delete_queue().queue_url(&url).send().await;
}

#[test]
fn redrive_refuses_bad_flags_before_calling_aws() {
    for args in [
        vec!["redrive", "--queue", "q"],
        vec!["redrive", "--queue", "q", "--function", "f", "--max", "0"],
        vec![
            "redrive",
            "--queue",
            "q",
            "--function",
            "f",
            "--visibility-timeout",
            "0",
        ],
        vec![
            "redrive",
            "--queue",
            "q",
            "--function",
            "f",
            "--visibility-timeout",
            "43201",
        ],
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            // Nowhere to go: a flag check that let the call through would fail differently.
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .output()
            .expect("spotcheck runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
