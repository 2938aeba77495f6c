//! `spotcheck local serve` driven by the AWS CLI, as a user would: create a managed-spot job
//! from a request file, watch it train, get interrupted by the market and restart, then stop it.
//!
//! The AWS CLI is the one scripts/emulators.sh installs into `.venv-localstack` (awscli 1.x);
//! scripts/test-all.sh starts the emulators, and with them that venv, before the tests run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn aws_cli() -> PathBuf {
    let aws = workspace().join(".venv-localstack/bin/aws");
    assert!(
        aws.is_file(),
        "{} is missing: run the suite with scripts/test-all.sh (it installs the emulators' venv)",
        aws.display()
    );
    aws
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn aws(endpoint: &str, args: &[&str]) -> Value {
    let out = Command::new(aws_cli())
        .args(["sagemaker", "--endpoint-url", endpoint, "--output", "json"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn secondary(d: &Value) -> Vec<String> {
    d["SecondaryStatusTransitions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["Status"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls DescribeTrainingJob (the CLI's own way of waiting) until `done` or a deadline.
fn describe_until(endpoint: &str, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = aws(
            endpoint,
            &["describe-training-job", "--training-job-name", name],
        );
        if done(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{name} never {what}: {d:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_aws_cli_creates_describes_and_stops_a_job_that_trains_and_is_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let trainer = Path::new(env!("CARGO_BIN_EXE_spotcheck")).with_file_name("train");
    assert!(trainer.is_file(), "{} is missing", trainer.display());
    let trace = dir.path().join("trace.json");
    std::fs::write(
        &trace,
        // Two outages: if the job is created after the first began (the AWS CLI is slow to
        // start on a loaded machine), it waits it out (fast-forwarded) and the second one hits
        // it while it trains.
        r#"{"outages": [{"at_seconds": 2, "duration_seconds": 60}, {"at_seconds": 70, "duration_seconds": 60}]}"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spotcheck"))
        .args(["local", "serve", "--listen", "127.0.0.1:0"])
        .args(["--s3-listen", "127.0.0.1:0", "--bucket", "cli-test"])
        .args(["--grace-seconds", "30", "--fast-forward"])
        .arg("--workdir")
        .arg(dir.path().join("work"))
        .arg("--trainer")
        .arg(&trainer)
        .arg("--trace")
        .arg(&trace)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = Server(child);
    let endpoint = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| Some(line.strip_prefix("SageMaker endpoint:")?.trim().to_owned()))
        .expect("the server printed no endpoint");
    // Both pipes are closed now (the reader was consumed): the server goes on writing its event
    // lines into them, and must keep serving (a closed terminal or pipe never kills it).
    drop(stderr);

    let request = json!({
        "TrainingJobName": "cli-job",
        "AlgorithmSpecification": {"TrainingImage": "spotcheck-trainer:latest", "TrainingInputMode": "File"},
        "RoleArn": "arn:aws:iam::000000000000:role/cli",
        "HyperParameters": {
            "dataset": "synthetic", "num_classes": "4", "synthetic_samples": "512",
            "image_size": "12", "model_width": "4", "model_hidden": "16", "batch_size": "32",
            "epochs": "100000", "checkpoint_every_steps": "20", "checkpoint_adaptive": "false"
        },
        "OutputDataConfig": {"S3OutputPath": "s3://cli-test/models"},
        "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
        "EnableManagedSpotTraining": true,
        "CheckpointConfig": {"S3Uri": "s3://cli-test/checkpoints/cli-job"}
    });
    let file = dir.path().join("request.json");
    std::fs::write(&file, request.to_string()).unwrap();
    let created = aws(
        &endpoint,
        &[
            "create-training-job",
            "--cli-input-json",
            &format!("file://{}", file.display()),
        ],
    );
    assert!(created["TrainingJobArn"]
        .as_str()
        .unwrap()
        .ends_with("training-job/cli-job"));

    let d = describe_until(
        &endpoint,
        "cli-job",
        "trained again after an interruption",
        |d| {
            let s = secondary(d);
            s.iter()
                .position(|x| x == "Interrupted")
                .is_some_and(|i| s[i + 1..].iter().any(|x| x == "Training"))
        },
    );
    assert_eq!(d["TrainingJobStatus"], "InProgress", "{d:#}");

    aws(
        &endpoint,
        &["stop-training-job", "--training-job-name", "cli-job"],
    );
    let d = describe_until(&endpoint, "cli-job", "stopped", |d| {
        d["TrainingJobStatus"] == "Stopped"
    });
    assert_eq!(d["SecondaryStatus"], "Stopped", "{d:#}");
    assert!(d["BillableTimeInSeconds"].as_u64().is_some(), "{d:#}");

    let listed = aws(&endpoint, &["list-training-jobs"]);
    assert_eq!(
        listed["TrainingJobSummaries"][0]["TrainingJobName"],
        "cli-job"
    );
}
