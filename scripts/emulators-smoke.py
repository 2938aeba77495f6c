"""Smoke test of the AWS emulators (scripts/emulators.sh) against what spotcheck relies on.

    bash scripts/emulators.sh start
    eval "$(bash scripts/emulators.sh env)"
    .venv-localstack/bin/python scripts/emulators-smoke.py
    bash scripts/emulators.sh stop

Checks, each printed as it passes; exits 1 after the first failure:
  LocalStack  S3 PutObject with ChecksumAlgorithm=CRC64NVME, HeadObject with ChecksumMode=ENABLED
              returning the same full-object CRC64NVME (also computed here independently),
              GetObjectAttributes(Checksum), conditional PutObject (If-None-Match: *) -> 412;
              EventBridge rule -> SQS target delivery of a spotcheck event;
              TestEventPattern with both rule patterns of infra/template.yaml over every event
              fixture in tests/fixtures/events/ plus synthetic status combinations, compared with
              the decision table the patterns are meant to encode.
  moto        SageMaker CreateTrainingJob (managed spot, checkpoint config, opt-in tag),
              DescribeTrainingJob, ListTags.
Endpoints come from the environment (AWS_ENDPOINT_URL_*), defaulting to 127.0.0.1:4566 / :5000.
Needs boto3 with the CRT (the LocalStack venv has both).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import sys
import time
import uuid
from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "infra", "tools"))
from check_template import load_template  # noqa: E402

REGION = os.environ.get("AWS_REGION", "us-east-1")
LOCALSTACK = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
ENDPOINTS = {
    "s3": os.environ.get("AWS_ENDPOINT_URL_S3", LOCALSTACK),
    "events": os.environ.get("AWS_ENDPOINT_URL_EVENTBRIDGE", LOCALSTACK),
    "sqs": os.environ.get("AWS_ENDPOINT_URL_SQS", LOCALSTACK),
    "sts": os.environ.get("AWS_ENDPOINT_URL_STS", LOCALSTACK),
    "sagemaker": os.environ.get("AWS_ENDPOINT_URL_SAGEMAKER", "http://127.0.0.1:5000"),
}
FIXTURE_ACCOUNT = "123456789012"

passed = 0


def client(service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=ENDPOINTS[service],
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def ok(message: str) -> None:
    global passed
    passed += 1
    print(f"ok {passed}: {message}")


def fail(message: str) -> None:
    print(f"FAILED: {message}", file=sys.stderr)
    print(f"{passed} passed, 1 failed")
    sys.exit(1)


def expect(condition: bool, message: str, detail: Any = "") -> None:
    if condition:
        ok(message)
    else:
        fail(f"{message} {detail}")


# --- S3 ---------------------------------------------------------------------------------------


def crc64nvme_b64(data: bytes) -> str:
    from awscrt import checksums  # shipped with botocore[crt]

    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


def smoke_s3() -> None:
    s3 = client("s3")
    bucket = f"spotcheck-smoke-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    key = "checkpoints/algo-1/step-000100/model.safetensors"
    body = os.urandom(64 * 1024)
    put = s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="CRC64NVME")
    expected = crc64nvme_b64(body)
    expect(put.get("ChecksumCRC64NVME") == expected, "S3 PutObject ChecksumAlgorithm=CRC64NVME", put)
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    expect(
        head.get("ChecksumCRC64NVME") == expected and head.get("ChecksumType") == "FULL_OBJECT",
        "S3 HeadObject ChecksumMode=ENABLED returns the full-object CRC64NVME",
        {k: head.get(k) for k in ("ChecksumCRC64NVME", "ChecksumType")},
    )
    attrs = s3.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["Checksum", "ObjectSize"])
    expect(
        attrs.get("Checksum", {}).get("ChecksumCRC64NVME") == expected and attrs.get("ObjectSize") == len(body),
        "S3 GetObjectAttributes(Checksum, ObjectSize)",
        attrs,
    )
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"again", IfNoneMatch="*")
        fail("S3 conditional PutObject (If-None-Match: *) on an existing key was accepted")
    except ClientError as err:
        code = err.response["Error"]["Code"]
        status = err.response["ResponseMetadata"]["HTTPStatusCode"]
        expect(status == 412, "S3 conditional PutObject on an existing key -> 412", f"{code} {status}")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/algo-1/")
    expect(listed.get("KeyCount") == 1, "S3 ListObjectsV2 under a checkpoint prefix", listed.get("KeyCount"))
    s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)


# --- EventBridge ------------------------------------------------------------------------------


def resolve(value: Any, account: str) -> Any:
    """Replaces the intrinsics the patterns use ({"Ref": "AWS::AccountId"})."""
    if isinstance(value, dict):
        if value == {"Ref": "AWS::AccountId"}:
            return account
        if len(value) == 1 and next(iter(value)).startswith(("Fn::", "Ref")):
            raise ValueError(f"unsupported intrinsic in an event pattern: {value}")
        return {k: resolve(v, account) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, account) for v in value]
    return value


def smoke_delivery(account: str) -> None:
    events, sqs = client("events"), client("sqs")
    suffix = uuid.uuid4().hex[:8]
    queue_url = sqs.create_queue(QueueName=f"spotcheck-smoke-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = f"spotcheck-smoke-{suffix}"
    events.put_rule(
        Name=rule,
        EventPattern=json.dumps({"source": ["spotcheck"], "detail-type": ["Training Job Relaunched"]}),
    )
    events.put_targets(Rule=rule, Targets=[{"Id": "queue", "Arn": queue_arn}])
    detail = {"previous_job": "train", "job_name": "train-r2-0123abcd", "root": "train", "attempt": 2}
    put = events.put_events(
        Entries=[{"Source": "spotcheck", "DetailType": "Training Job Relaunched", "Detail": json.dumps(detail)}]
    )
    expect(put["FailedEntryCount"] == 0, "EventBridge PutEvents (source spotcheck)", put)
    body = None
    deadline = time.time() + 20
    while body is None and time.time() < deadline:
        got = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2, MaxNumberOfMessages=1)
        for message in got.get("Messages", []):
            body = json.loads(message["Body"])
    expect(
        body is not None and body.get("detail") == detail and body.get("detail-type") == "Training Job Relaunched",
        "EventBridge rule -> SQS target delivered the event",
        body,
    )
    events.remove_targets(Rule=rule, Ids=["queue"])
    events.delete_rule(Name=rule)
    sqs.delete_queue(QueueUrl=queue_url)


def sagemaker_acts_on(event: dict[str, Any]) -> bool:
    """The decision table rows that lead to an action (see the rule's comment in the template)."""
    detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
    status, secondary = detail.get("TrainingJobStatus"), detail.get("SecondaryStatus")
    return (
        event.get("source") == "aws.sagemaker"
        and event.get("detail-type") == "SageMaker Training Job State Change"
        and event.get("account") == FIXTURE_ACCOUNT
        and (
            status in ("Completed", "Failed")
            or (status == "Stopped" and secondary in ("Stopped", "MaxWaitTimeExceeded", "MaxRuntimeExceeded"))
            or (status == "InProgress" and secondary == "Interrupted")
        )
    )


def ec2_acts_on(event: dict[str, Any]) -> bool:
    return (
        event.get("source") == "aws.ec2"
        and event.get("detail-type")
        in ("EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation")
        and event.get("account") == FIXTURE_ACCOUNT
    )


def envelope(event: dict[str, Any]) -> dict[str, Any]:
    """Fills the envelope fields every real event has (TestEventPattern requires them)."""
    full = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "account": FIXTURE_ACCOUNT,
        "time": "2026-01-01T00:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": {},
    }
    full.update(event)
    return full


def candidate_events() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "events", "*.json"))):
        try:
            event = json.load(open(path, encoding="utf-8"))
        except ValueError:
            continue  # deliberately malformed fixtures: never reach a rule
        if isinstance(event, dict) and "source" in event and "detail-type" in event:
            found.append((os.path.basename(path), envelope(event)))
    statuses = ["InProgress", "Completed", "Failed", "Stopping", "Stopped"]
    secondaries = [
        "Starting", "LaunchingMLInstances", "PreparingTrainingStack", "Downloading",
        "DownloadingTrainingImage", "Training", "Uploading", "Stopping", "Stopped",
        "MaxRuntimeExceeded", "Completed", "Failed", "Interrupted", "MaxWaitTimeExceeded",
        "Updating", "Restarting", "Pending", "SomethingNew",
    ]  # fmt: skip
    for status in statuses:
        for secondary in secondaries:
            found.append((
                f"synthetic {status}/{secondary}",
                envelope({
                    "source": "aws.sagemaker",
                    "detail-type": "SageMaker Training Job State Change",
                    "detail": {"TrainingJobName": "t", "TrainingJobStatus": status, "SecondaryStatus": secondary},
                }),
            ))
    found.append((
        "synthetic Stopped/MaxWaitTimeExceeded from another account",
        envelope({
            "account": "210987654321",
            "source": "aws.sagemaker",
            "detail-type": "SageMaker Training Job State Change",
            "detail": {"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxWaitTimeExceeded"},
        }),
    ))
    found.append((
        "synthetic spot warning from another account",
        envelope({
            "account": "210987654321",
            "source": "aws.ec2",
            "detail-type": "EC2 Spot Instance Interruption Warning",
            "detail": {"instance-id": "i-0123456789abcdef0", "instance-action": "terminate"},
        }),
    ))
    return found


def smoke_patterns() -> None:
    events = client("events")
    template = load_template(os.path.join(ROOT, "infra", "template.yaml"))
    rules: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = {
        "SageMakerStateChangeRule": ({}, sagemaker_acts_on),
        "Ec2SpotSignalRule": ({}, ec2_acts_on),
    }
    for name in rules:
        pattern = resolve(template["Resources"][name]["Properties"]["EventPattern"], FIXTURE_ACCOUNT)
        rules[name] = (pattern, rules[name][1])
    candidates = candidate_events()
    for name, (pattern, oracle) in rules.items():
        matched, wrong = 0, []
        for label, event in candidates:
            answer = events.test_event_pattern(EventPattern=json.dumps(pattern), Event=json.dumps(event))["Result"]
            if answer != oracle(event):
                wrong.append(f"{label}: pattern says {answer}, decision table says {oracle(event)}")
            matched += answer
        expect(
            not wrong and matched >= 3,
            f"TestEventPattern {name}: {len(candidates)} events, {matched} matched, all as intended",
            "\n  " + "\n  ".join(wrong),
        )


# --- SageMaker (moto) -------------------------------------------------------------------------


def smoke_sagemaker(account: str) -> None:
    sm = client("sagemaker")
    name = f"spotcheck-smoke-{uuid.uuid4().hex[:8]}"
    created = sm.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": f"{account}.dkr.ecr.{REGION}.amazonaws.com/spotcheck-train:latest",
            "TrainingInputMode": "File",
        },
        RoleArn=f"arn:aws:iam::{account}:role/spotcheck-training",
        OutputDataConfig={"S3OutputPath": "s3://spotcheck-smoke/output/"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
        EnableManagedSpotTraining=True,
        CheckpointConfig={"S3Uri": f"s3://spotcheck-smoke/checkpoints/{name}", "LocalPath": "/opt/ml/checkpoints"},
        Tags=[{"Key": "spotcheck:enabled", "Value": "true"}],
    )
    expect(created.get("TrainingJobArn", "").endswith(f"training-job/{name}"), "moto SageMaker CreateTrainingJob", created)
    described = sm.describe_training_job(TrainingJobName=name)
    expect(
        described["TrainingJobName"] == name
        and described.get("TrainingJobStatus") in ("InProgress", "Completed", "Failed", "Stopping", "Stopped")
        and described.get("CheckpointConfig", {}).get("S3Uri", "").endswith(name),
        f"moto SageMaker DescribeTrainingJob (status {described.get('TrainingJobStatus')})",
        described,
    )
    tags = sm.list_tags(ResourceArn=created["TrainingJobArn"])["Tags"]
    expect({"Key": "spotcheck:enabled", "Value": "true"} in tags, "moto SageMaker ListTags has the opt-in tag", tags)


def main() -> int:
    print(f"endpoints: {json.dumps(ENDPOINTS)}")
    account = client("sts").get_caller_identity()["Account"]
    ok(f"LocalStack STS GetCallerIdentity (account {account})")
    smoke_s3()
    smoke_delivery(account)
    smoke_patterns()
    smoke_sagemaker(account)
    print(f"{passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
